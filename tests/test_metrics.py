"""Prometheus metrics: scraped over HTTP from live ``celery beat`` processes, and EmbeddedBeat's.

Counts are compared with what the broker actually received (kombu's filesystem transport), never
with figures written into the test.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beatleader import ConfigError, EmbeddedBeat, Settings
from beatleader.observe.metrics import PrometheusObserver, observer_for
from beatleader.runs import metrics as run_metrics
from tests.cluster import ENTRY, leader_process, now_ms, sender_pid
from tests.cluster import one_second_env as _one_second_env
from tests.harness import REPO_ROOT, FilesystemBroker, contenders, free_port, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return _parse(response.read().decode())


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _start_with_metrics(beats: Any, zk_client: Any, zk_root: str, count: int) -> dict[int, int]:
    """Start ``count`` beats, each serving metrics on its own port; return pid -> port."""
    ports = [free_port() for _ in range(count)]
    processes = [
        beats(env={**_one_second_env(), "BEATLEADER_METRICS_PORT": str(port)}) for port in ports
    ]
    wait_for(lambda: all(try_scrape(p) for p in ports), 30, message="every /metrics answers")
    wait_for(lambda: len(contenders(zk_client, zk_root)) == count, 30, message="contenders")
    return {p.pid: port for p, port in zip(processes, ports, strict=True)}


def test_live_beats_export_leadership_and_sends_that_match_the_broker(
    beats, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    ports = _start_with_metrics(beats, zk_client, zk_root, 2)
    wait_for(lambda: broker.count(ENTRY) >= 2, 20, message="two sends")
    leader = leader_process(beats.processes, zk_client, zk_root)
    (follower,) = [p for p in beats.processes if p is not leader]
    path = {"path": zk_root}

    def leading(pid: int) -> float | None:
        return value(scrape(ports[pid]), "beatleader_is_leader", **path)

    wait_for(lambda: leading(leader.pid) == 1.0, 10, message="is_leader 1 on the leader")
    assert leading(follower.pid) == 0.0
    for port in ports.values():
        assert value(scrape(port), "beatleader_zk_connected", **path) == 1.0

    def sent_matches(process: Any) -> bool:
        counted = value(
            scrape(ports[process.pid]), "beatleader_runs_sent_total", entry=ENTRY, **path
        )
        received = sum(sender_pid(m) == process.pid for m in broker.for_entry(ENTRY))
        return counted == received

    wait_for(lambda: sent_matches(leader), 10, message="runs_sent equals the broker's count")
    leader_samples = scrape(ports[leader.pid])
    follower_samples = scrape(ports[follower.pid])
    assert value(follower_samples, "beatleader_runs_sent_total", entry=ENTRY, **path) is None
    last_run = value(leader_samples, "beatleader_last_run_timestamp_seconds", entry=ENTRY, **path)
    assert last_run is not None and abs(time.time() - last_run) < 10
    next_run = value(leader_samples, "beatleader_next_run_timestamp_seconds", entry=ENTRY, **path)
    assert next_run is not None and -5 < next_run - time.time() < 5
    assert (
        value(follower_samples, "beatleader_next_run_timestamp_seconds", entry=ENTRY, **path)
        is None
    )
    assert (value(leader_samples, "beatleader_commit_seconds_count", **path) or 0) >= 2

    killed_at = now_ms()
    leader.kill()
    wait_for(lambda: leading(follower.pid) == 1.0, 20, message="the follower's is_leader 1")
    wait_for(
        lambda: any(m.sent_ms > killed_at for m in broker.for_entry(ENTRY)), 20, message="a send"
    )
    wait_for(lambda: sent_matches(follower), 10, message="the new leader's runs_sent")
    changes = value(scrape(ports[follower.pid]), "beatleader_leadership_changes_total", **path)
    assert changes is not None and changes >= 1.0


def test_a_metrics_port_in_use_is_one_error_line_and_beat_keeps_sending(
    beats, broker_dir, zk_client, zk_root
) -> None:
    broker = FilesystemBroker(broker_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        beat = beats(env={**_one_second_env(), "BEATLEADER_METRICS_PORT": str(port)})
        wait_for(lambda: broker.count(ENTRY) >= 2, 30, message="sends despite the taken port")
    errors = beat.log_matches(r"ERROR.*cannot serve metrics on 127\.0\.0\.1:\d+")
    assert len(errors) == 1, beat.log_tail(40)
    assert "Traceback" not in beat.log()


@pytest.mark.parametrize("raw", ["0", "65536", "http", "-1", "80.5"])
def test_an_invalid_metrics_port_is_a_one_line_error(raw: str) -> None:
    app = Celery("m", set_as_current=False)
    app.conf.beatleader_metrics_port = raw
    with pytest.raises(
        ConfigError, match=r"^beatleader_metrics_port = .* TCP port from 1 to 65535"
    ):
        Settings.from_app(app)


def test_a_metrics_port_without_prometheus_client_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prometheus_client" else real(name, *a),
    )
    app = Celery("m", set_as_current=False)
    app.conf.beatleader_metrics_port = 9808
    with pytest.raises(ConfigError, match=r"pip install 'beatleader\[prometheus\]'") as info:
        Settings.from_app(app)
    assert "\n" not in str(info.value)


def test_settings_default_to_no_server_on_loopback() -> None:
    settings = Settings.from_app(Celery("m", set_as_current=False))
    assert (settings.metrics_port, settings.metrics_address) == (None, "127.0.0.1")


def _embedded_app(broker_dir: Path) -> Celery:
    from tests.app import make_app

    return make_app(
        {"TEST_BROKER_DIR": str(broker_dir), "TEST_SCHEDULE": '{"every second": {"every": 1}}'},
        set_as_current=False,
    )


def test_embedded_beat_registers_its_metrics_in_the_given_registry(
    zk_server, zk_root, broker_dir
) -> None:
    registry = CollectorRegistry()
    broker = FilesystemBroker(broker_dir)
    beat = EmbeddedBeat(
        _embedded_app(broker_dir),
        metrics_registry=registry,
        zk_hosts=zk_server.hosts,
        path=zk_root,
        session_timeout=5,
    ).start()

    def samples() -> Samples:
        return _parse(generate_latest(registry).decode())

    try:
        wait_for(
            lambda: value(samples(), "beatleader_is_leader", path=zk_root) == 1.0,
            20,
            message="leads",
        )
        wait_for(lambda: broker.count(ENTRY) >= 2, 20, message="two sends")
        wait_for(
            lambda: (
                value(samples(), "beatleader_runs_sent_total", path=zk_root, entry=ENTRY)
                == broker.count(ENTRY)
            ),
            10,
            message="runs_sent equals the broker's count",
        )
        assert value(samples(), "beatleader_zk_connected", path=zk_root) == 1.0
    finally:
        beat.stop()
    assert value(samples(), "beatleader_is_leader", path=zk_root) == 0.0
    assert value(samples(), "beatleader_zk_connected", path=zk_root) == 0.0
    assert (
        value(samples(), "beatleader_next_run_timestamp_seconds", path=zk_root, entry=ENTRY) is None
    )


def test_a_metrics_registry_that_is_not_one_is_a_config_error() -> None:
    app = Celery("m", set_as_current=False)
    with pytest.raises(ConfigError, match=r"^metrics_registry = True is invalid: expected a "):
        EmbeddedBeat(app, metrics_registry=True, zk_hosts="127.0.0.1:1")


def test_one_observer_per_registry_and_path() -> None:
    registry = CollectorRegistry()
    first = observer_for("/a", registry)
    assert observer_for("/a", registry) is first
    assert observer_for("/b", registry) is not first
    assert observer_for("/a", CollectorRegistry()) is not first


class _Exploding(PrometheusObserver):
    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        raise RuntimeError("metrics backend down")

    def committed(self, runs: int, seconds: float) -> None:
        raise RuntimeError("metrics backend down")


def test_a_failing_metrics_observer_never_breaks_scheduling(
    zk_server, zk_root, broker_dir, caplog, monkeypatch
) -> None:
    import beatleader.observe.metrics

    exploding = _Exploding(zk_root, CollectorRegistry())
    monkeypatch.setattr(
        beatleader.observe.metrics, "observer_for", lambda path, registry: exploding
    )
    broker = FilesystemBroker(broker_dir)
    with caplog.at_level(logging.ERROR, logger="beatleader.observe"):
        beat = EmbeddedBeat(
            _embedded_app(broker_dir),
            metrics_registry=CollectorRegistry(),
            zk_hosts=zk_server.hosts,
            path=zk_root,
            session_timeout=5,
        ).start()
        try:
            wait_for(lambda: broker.count(ENTRY) >= 3, 30, message="three sends despite it")
        finally:
            beat.stop()
    failures = [r.getMessage() for r in caplog.records if "failed in" in r.getMessage()]
    assert len(failures) == 2, failures  # once per hook (sent, committed), not once per run


def test_the_documented_alert_rules_are_valid_yaml_naming_exported_metrics() -> None:
    rules = yaml.safe_load((REPO_ROOT / "docs" / "prometheus-alerts.yml").read_text())
    exported = {
        "beatleader_is_leader",
        "beatleader_next_run_timestamp_seconds",
        "beatleader_zk_connected",
        "beatleader_leadership_changes_total",
        "beatleader_problems_total",
        *run_metrics.METRIC_NAMES,  # tests/test_run_metrics.py scrapes each of them
    }
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {
        "BeatleaderNoLeader",
        "BeatleaderEntryOverdue",
        "BeatleaderEntryFailing",
        "BeatleaderEntryNoSuccess",
    } <= {a["alert"] for a in alerts}
    for alert in alerts:
        assert set(alert) >= {"alert", "expr", "labels", "annotations"}
        names = {word for word in _words(alert["expr"]) if word.startswith("beatleader_")}
        assert names and names <= exported, alert["expr"]


def _words(expr: str) -> list[str]:
    out, word = [], ""
    for char in expr + " ":
        if char.isalnum() or char == "_":
            word += char
        else:
            out.append(word)
            word = ""
    return out
