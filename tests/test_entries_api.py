"""beatleader.entries: the Python API of runtime entries, against the suite's real ZooKeeper.

Every operation, what it writes (nodes, data, ACLs with digest auth), every refusal as one line,
and ``list_entries`` surviving hostile nodes. No scheduler runs here: a running instance is
imitated by its contender and published schedule nodes (what ``entry`` reads of it).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from kazoo.exceptions import NoAuthError
from kazoo.security import make_acl, make_digest_acl

from beatleader import entries
from beatleader.config import Settings
from beatleader.entries.api import EntryStore
from beatleader.schedules.definitions import Definition, DefinitionError
from beatleader.schedules.describe import PlannedEntry, encode_schedule
from beatleader.zk import layout
from beatleader.zk.layout import ContenderInfo, EntryState
from tests.app import make_app
from tests.harness import connected_client
from tests.security import APP_PASSWORD, AUTH

STATIC = "static-tick"


@pytest.fixture
def app(zk_server: Any, zk_root: str) -> Any:
    app = make_app({"TEST_SCHEDULE": json.dumps({STATIC: {"every": 60}})}, set_as_current=False)
    app.conf.beatleader_zk_hosts = zk_server.hosts
    app.conf.beatleader_path = zk_root
    return app


@pytest.fixture
def store(zk_client: Any, zk_root: str, app: Any) -> EntryStore:
    return EntryStore(zk_client, zk_root, app)


def node(client: Any, path: str) -> dict[str, Any]:
    return json.loads(client.get(path)[0])  # type: ignore[no-any-return]


def by_name(store: EntryStore) -> dict[tuple[str, str], Any]:
    return {(e.name, e.source): e for e in store.list_entries()}


def publish_instance(client: Any, root: str, names: dict[str, PlannedEntry]) -> None:
    """What a running instance publishes: an ephemeral contender and its schedule."""
    fingerprint = uuid.uuid4().hex[:16]
    info = ContenderInfo("i1", "host", 1, "0", "2026-01-01T00:00:00+00:00", fingerprint, "app")
    client.create(
        f"{layout.election_path(root)}/{uuid.uuid4().hex}__contender__",
        info.encode(),
        ephemeral=True,
        sequence=True,
        makepath=True,
    )
    client.create(
        layout.schedule_path(root, fingerprint),
        encode_schedule(list(names.values())),
        makepath=True,
    )


# --- add ----------------------------------------------------------------------------------------


def test_add_each_kind_writes_a_validated_definition(store, zk_client, zk_root) -> None:
    store.add("every", task="tests.app.record", every="90m", args=["x"], queue="q", priority=3)
    store.add(
        "cron", task="tests.app.record", cron="0 9 * * 1-5", timezone="Europe/Paris", expires=30
    )
    store.add("once", task="tests.app.record", at="2030-01-01T09:00:00+01:00", kwargs={"k": 1})
    data = node(zk_client, layout.definition_path(zk_root, "every"))
    assert data["schedule"] == {"every": 5400.0} and data["args"] == ["x"]
    assert data["options"] == {"queue": "q", "priority": 3}
    assert data["enabled"] is True and "@" in data["changed_by"]
    assert datetime.fromisoformat(data["changed_at"]).tzinfo is not None
    cron = node(zk_client, layout.definition_path(zk_root, "cron"))
    assert cron["schedule"] == {"crontab": "0 9 * * 1-5", "timezone": "Europe/Paris"}
    assert cron["options"] == {"expires": 30.0}
    once = node(zk_client, layout.definition_path(zk_root, "once"))
    assert once["schedule"] == {"at": "2030-01-01T09:00:00+01:00"}
    for name in ("every", "cron", "once"):
        raw = zk_client.get(layout.definition_path(zk_root, name))[0]
        assert Definition.parse(raw)[1] is None


def test_add_odd_names_round_trip(store, zk_client, zk_root) -> None:
    for name in ("a/b c", "..", "naïve", "x__run__y"):
        store.add(name, task="tests.app.record", every=5)
    listed = {e.name for e in store.list_entries() if e.source == "runtime"}
    assert listed == {"a/b c", "..", "naïve", "x__run__y"}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"task": "tests.app.record"}, "give a schedule"),
        ({"task": "tests.app.record", "every": "often"}, "--every 'often' is not an interval"),
        ({"task": "tests.app.record", "every": "0s"}, "--every"),
        ({"task": "tests.app.record", "cron": "* * *"}, "--cron"),
        ({"task": "tests.app.record", "cron": "99 * * * *"}, "not a valid crontab"),
        ({"task": "tests.app.record", "at": "2030-01-01 09:00"}, "UTC offset"),
        ({"task": "tests.app.record", "every": "5", "cron": "* * * * *"}, "give one schedule"),
        ({"task": "tests.app.record", "every": "5", "timezone": "UTC"}, "--cron only"),
        ({"task": "tests.app.record", "cron": "* * * * *", "timezone": "Nowhere/X"}, "time zone"),
        ({"task": "tests.app.record", "every": "5", "priority": 300}, "--priority"),
        ({"task": "tests.app.record", "every": "5", "expires": -1}, "--expires"),
        ({"task": "tests.app.record", "every": "5", "args": {"a": 1}}, "args must be a list"),
        ({"task": "tests.app.record", "every": "5", "kwargs": [1]}, "kwargs must be a mapping"),
        ({"task": "tests.app.record", "every": "5", "args": [object()]}, "JSON"),
        ({"task": "tests.app.nope", "every": "5"}, "not registered in app"),
        ({"task": "has space", "every": "5", "force": True}, "no whitespace"),
        ({"task": "tests.app.record", "every": "5", "queue": ""}, "queue must not be empty"),
    ],
)
def test_add_refuses_bad_input_in_one_line(store, zk_client, zk_root, spec, needle) -> None:
    with pytest.raises(DefinitionError) as caught:
        store.add("x", **spec)
    message = str(caught.value)
    assert needle in message and "\n" not in message
    assert zk_client.exists(layout.definition_path(zk_root, "x")) is None


def test_a_solar_schedule_needs_ephem_with_an_app(store, zk_client, zk_root) -> None:
    try:
        import ephem  # noqa: F401
    except ImportError:
        with pytest.raises(DefinitionError, match="ephem"):
            store.add("sun", task="tests.app.record", solar=("sunrise", 52.1, 4.3))
        assert zk_client.exists(layout.definition_path(zk_root, "sun")) is None
    else:
        store.add("sun", task="tests.app.record", solar=("sunrise", 52.1, 4.3))
        assert by_name(store)[("sun", "runtime")].schedule == "solar sunrise (52.1, 4.3)"


def test_unknown_task_is_accepted_with_force(store, zk_client, zk_root) -> None:
    store.add("x", task="proj.tasks.elsewhere", every="5", force=True)
    assert node(zk_client, layout.definition_path(zk_root, "x"))["task"] == "proj.tasks.elsewhere"


def test_add_refuses_a_name_taken(store, zk_client, zk_root) -> None:
    store.add("mine", task="tests.app.record", every="5")
    with pytest.raises(DefinitionError, match="exists \\(use update\\)"):
        store.add("mine", task="tests.app.record", every="6")
    with pytest.raises(DefinitionError, match="static beat_schedule entry has that name"):
        store.add(STATIC, task="tests.app.record", every="6")
    # without the app: the names a running instance published are static too
    publish_instance(zk_client, zk_root, {"theirs": PlannedEntry("theirs", "t", "every 5s", 5.0)})
    bare = EntryStore(zk_client, zk_root)
    with pytest.raises(DefinitionError, match="static beat_schedule entry has that name"):
        bare.add("theirs", task="t", every="6")
    bare.add(STATIC, task="t", every="6")  # without the app, its beat_schedule is unknown
    assert node(zk_client, layout.definition_path(zk_root, "mine"))["schedule"]["every"] == 5.0


# --- update, remove -----------------------------------------------------------------------------


def test_update_changes_only_what_is_given(store, zk_client, zk_root) -> None:
    store.add("u", task="tests.app.record", every="5", args=[1], queue="q", priority=2)
    store.update("u", cron="*/5 * * * *", kwargs={"a": 1}, priority=7)
    data = node(zk_client, layout.definition_path(zk_root, "u"))
    assert data["schedule"] == {"crontab": "*/5 * * * *"}
    assert (data["args"], data["kwargs"]) == ([1], {"a": 1})
    assert data["options"] == {"queue": "q", "priority": 7}
    store.update("u", timezone="Asia/Tokyo")
    data = node(zk_client, layout.definition_path(zk_root, "u"))
    assert data["schedule"] == {"crontab": "*/5 * * * *", "timezone": "Asia/Tokyo"}
    store.update("u", every="10s")
    with pytest.raises(DefinitionError, match="--cron only"):
        store.update("u", timezone="UTC")
    with pytest.raises(DefinitionError, match="not registered"):
        store.update("u", task="tests.app.unknown")
    store.update("u", task="tests.app.unknown", force=True)
    assert node(zk_client, layout.definition_path(zk_root, "u"))["task"] == "tests.app.unknown"


def test_update_and_remove_refuse_unknown_and_static(store) -> None:
    for operation in (store.remove, lambda n: store.update(n, every="5")):
        with pytest.raises(DefinitionError, match="no such entry"):
            operation("ghost")
        with pytest.raises(DefinitionError, match="it is a static beat_schedule entry"):
            operation(STATIC)


def test_concurrent_update_is_retried_on_the_fresh_definition(store, zk_client, zk_root) -> None:
    store.add("c", task="tests.app.record", every="5", queue="q")
    path = layout.definition_path(zk_root, "c")
    real_get = store.get
    raced = []

    def racing_get(name: str) -> Any:
        found = real_get(name)
        if not raced:  # another writer changes the entry between our read and our write
            raced.append(True)
            other = Definition.parse(zk_client.get(path)[0])[0]
            assert other is not None
            zk_client.set(path, other.with_changes(args=("theirs",)).encode())
        return found

    store.get = racing_get  # type: ignore[method-assign]
    store.update("c", priority=9)
    data = node(zk_client, path)
    assert data["args"] == ["theirs"] and data["options"] == {"queue": "q", "priority": 9}


def test_remove_keeps_run_state(store, zk_client, zk_root) -> None:
    store.add("r", task="tests.app.record", every="5")
    state = EntryState("2026-01-01T00:00:00+00:00", 3, "id", "leader")
    zk_client.create(layout.entry_path(zk_root, "r"), state.encode(), makepath=True)
    store.remove("r")
    assert zk_client.exists(layout.definition_path(zk_root, "r")) is None
    assert EntryState.decode(zk_client.get(layout.entry_path(zk_root, "r"))[0]) == state


# --- pause, resume, run ------------------------------------------------------------------------


def test_pause_and_resume_a_runtime_entry(store, zk_client, zk_root) -> None:
    store.add("p", task="tests.app.record", every="5")
    assert store.pause("p") == "runtime"
    assert node(zk_client, layout.definition_path(zk_root, "p"))["enabled"] is False
    assert by_name(store)[("p", "runtime")].state == "paused"
    assert store.pause("p") == "runtime"  # idempotent
    assert store.resume("p") == "runtime"
    assert node(zk_client, layout.definition_path(zk_root, "p"))["enabled"] is True
    assert zk_client.exists(layout.paused_entry_path(zk_root, "p")) is None


def test_pause_and_resume_a_static_entry(store, zk_client, zk_root) -> None:
    marker = layout.paused_entry_path(zk_root, STATIC)
    assert store.pause(STATIC) == "static"
    assert set(node(zk_client, marker)) == {"changed_by", "changed_at"}
    assert store.pause(STATIC) == "static"
    assert by_name(store)[(STATIC, "static")].state == "paused"
    assert store.resume(STATIC) == "static"
    assert zk_client.exists(marker) is None
    assert store.resume(STATIC) == "static"  # not paused: nothing to do
    assert by_name(store)[(STATIC, "static")].state == "enabled"
    for operation in (store.pause, store.resume, store.run):
        with pytest.raises(DefinitionError, match="no such entry"):
            operation("ghost")


def test_run_creates_one_request_per_call(store, zk_client, zk_root) -> None:
    store.add("now", task="tests.app.record", every="1h")
    first = store.run("now")
    second = store.run("now")
    third = store.run(STATIC)
    assert first != second and first.startswith(layout.request_prefix(zk_root, "now"))
    children = sorted(zk_client.get_children(layout.requests_path(zk_root)))
    assert [layout.request_entry_name(c) for c in children] == ["now", "now", STATIC]
    assert set(node(zk_client, third)) == {"changed_by", "changed_at"}
    listed = by_name(store)
    assert listed[("now", "runtime")].pending_runs == 2
    assert listed[(STATIC, "static")].pending_runs == 1


# --- list ---------------------------------------------------------------------------------------


def test_list_static_and_runtime_with_next_due(store, zk_client, zk_root) -> None:
    store.add("iv", task="tests.app.record", every="30s")
    store.add("cr", task="tests.app.record", cron="0 9 * * *", timezone="Europe/Paris")
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    store.add("once", task="tests.app.record", at=past)
    future = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)
    store.add("later", task="tests.app.record", at=future.isoformat())
    last = datetime.now(timezone.utc).replace(microsecond=0)
    for name in ("iv", "once"):
        state = EntryState(last.isoformat(), 1, "id", "leader")
        zk_client.create(layout.entry_path(zk_root, name), state.encode(), makepath=True)
    listed = by_name(store)
    iv = listed[("iv", "runtime")]
    assert (iv.state, iv.schedule, iv.total_run_count) == ("enabled", "every 30s", 1)
    assert iv.next_due == (last + timedelta(seconds=30)).isoformat()
    cr = listed[("cr", "runtime")]
    assert cr.schedule == "crontab 0 9 * * * (Europe/Paris)"
    assert cr.next_due is not None
    due = datetime.fromisoformat(cr.next_due).astimezone(timezone.utc)
    assert due.hour in (7, 8) and due.minute == 0  # 09:00 in Paris, summer or winter
    assert (listed[("once", "runtime")].state, listed[("once", "runtime")].next_due) == (
        "done",
        None,
    )
    assert listed[("later", "runtime")].next_due == future.isoformat()
    static = listed[(STATIC, "static")]
    assert (static.state, static.schedule, static.task) == (
        "enabled",
        "every 60s",
        "tests.app.record",
    )
    assert [e.name for e in store.list_entries()] == sorted(e.name for e in store.list_entries())
    as_json = json.loads(json.dumps([e.as_dict() for e in store.list_entries()]))
    assert {e["name"] for e in as_json} == {"iv", "cr", "once", "later", STATIC}


def test_list_survives_hostile_nodes(store, zk_client, zk_root) -> None:
    store.add("good", task="tests.app.record", every="5")
    hostile = {
        "garbage": b"\xff\x00not json",
        "list": b"[1, 2]",
        "extra": json.dumps({"task": "t", "schedule": {"every": 5}, "evil": 1}).encode(),
        "badcron": json.dumps({"task": "t", "schedule": {"crontab": "x x x x x"}}).encode(),
        "empty": b"",
    }
    for name, data in hostile.items():
        zk_client.create(layout.definition_path(zk_root, name), data)
    zk_client.create(layout.entry_path(zk_root, "good"), b"\xfe state garbage", makepath=True)
    for odd in ("no-marker", "x__run__abc", "__run__0000000001"):
        zk_client.create(f"{layout.requests_path(zk_root)}/{odd}", b"", makepath=True)
    zk_client.create(layout.paused_entry_path(zk_root, "nobody"), b"\x00", makepath=True)
    # a contender whose schedule node is garbage, and a foreign election node
    publish_instance(zk_client, zk_root, {})
    fingerprint = ContenderInfo.decode(
        zk_client.get(
            f"{layout.election_path(zk_root)}/"
            + zk_client.get_children(layout.election_path(zk_root))[0]
        )[0]
    )
    assert fingerprint is not None
    zk_client.set(layout.schedule_path(zk_root, fingerprint.fingerprint), b"{{{")
    zk_client.create(f"{layout.election_path(zk_root)}/intruder", b"x")

    listed = by_name(store)
    for name in hostile:
        item = listed[(name, "runtime")]
        assert item.state == "invalid" and item.problem, name
        assert "\n" not in item.problem
    good = listed[("good", "runtime")]
    assert (good.state, good.total_run_count, good.pending_runs) == ("enabled", 0, 0)
    with pytest.raises(DefinitionError, match="is invalid"):
        store.update("garbage", every="5")
    store.remove("garbage")  # an invalid definition can be removed
    assert ("garbage", "runtime") not in by_name(store)


def test_runtime_definition_shadowed_by_a_static_entry_is_listed_ignored(
    store, zk_client, zk_root
) -> None:
    definition = Definition("tests.app.record", {"every": 5.0}).validated()
    zk_client.create(layout.definition_path(zk_root, STATIC), definition.encode(), makepath=True)
    listed = by_name(store)
    assert listed[(STATIC, "static")].state == "enabled"
    shadowed = listed[(STATIC, "runtime")]
    assert shadowed.state == "ignored" and "static entry runs" in str(shadowed.problem)
    # pause acts on what runs: the static entry
    assert store.pause(STATIC) == "static"
    assert zk_client.exists(layout.paused_entry_path(zk_root, STATIC)) is not None
    assert node(zk_client, layout.definition_path(zk_root, STATIC))["enabled"] is True
    # the same without the app, the name published by a running instance
    publish_instance(zk_client, zk_root, {"pub": PlannedEntry("pub", "t", "every 5s", 5.0)})
    zk_client.create(layout.definition_path(zk_root, "pub"), definition.encode())
    bare = {(e.name, e.source): e for e in EntryStore(zk_client, zk_root).list_entries()}
    assert bare[("pub", "static")].state == "enabled"
    assert bare[("pub", "runtime")].state == "ignored"


# --- the functions: app or Settings; auth and ACLs ----------------------------------------------


def test_functions_with_an_app_and_with_settings(app, zk_server, zk_root, zk_client) -> None:
    entries.add(app, "f", task="tests.app.record", every="1m")
    settings = Settings.from_app(None, zk_hosts=zk_server.hosts, path=zk_root)
    entries.update(settings, "f", args=["via settings"])
    assert entries.pause(app, "f") == "runtime"
    assert entries.resume(settings, "f") == "runtime"
    path = entries.run(settings, "f")
    assert zk_client.exists(path) is not None
    listed = {(e.name, e.source): e for e in entries.list_entries(settings)}
    assert listed[("f", "runtime")].definition.args == ("via settings",)  # type: ignore[union-attr]
    with pytest.raises(DefinitionError, match="not registered"):
        entries.add(app, "g", task="nope", every="1m")
    entries.add(settings, "g", task="nope", every="1m")  # no app: no task check
    entries.remove(app, "f")
    assert zk_client.exists(layout.definition_path(zk_root, "f")) is None


@pytest.fixture
def secure_root() -> str:
    return f"/bltest-secure/{uuid.uuid4().hex}/app"


@pytest.fixture
def secure(zk_server: Any, secure_root: str) -> Iterator[Settings]:
    yield Settings.from_app(None, zk_hosts=zk_server.hosts, path=secure_root, zk_auth=AUTH)


def test_with_auth_every_node_is_owned_and_strangers_cannot_write(
    secure, zk_server, secure_root
) -> None:
    stack = contextlib.ExitStack()
    with stack:
        _owned_and_refused(stack, secure, zk_server, secure_root)


def _owned_and_refused(stack: Any, secure: Any, zk_server: Any, secure_root: str) -> None:
    entries.add(secure, "s", task="t", every="5")
    entries.pause(secure, "s")
    entries.run(secure, "s")
    publish = {"st": PlannedEntry("st", "t", "every 5s", 5.0)}
    owner = stack.enter_context(connected_client(zk_server.hosts, zk_auth=AUTH))
    publish_instance(owner, secure_root, publish)  # ephemeral: while owner is connected
    entries.pause(secure, "st")
    expected = [
        make_digest_acl("app", APP_PASSWORD, all=True),
        make_acl("world", "anyone", read=True),
    ]
    request = owner.get_children(layout.requests_path(secure_root))[0]
    for path in (
        layout.definitions_path(secure_root),
        layout.definition_path(secure_root, "s"),
        layout.paused_entry_path(secure_root, "st"),
        f"{layout.requests_path(secure_root)}/{request}",
    ):
        assert owner.get_acls(path)[0] == expected, path
    stranger = Settings.from_app(None, zk_hosts=zk_server.hosts, path=secure_root)
    for attempt in (
        lambda: entries.add(stranger, "t2", task="t", every="5"),
        lambda: entries.update(stranger, "s", every="9"),
        lambda: entries.resume(stranger, "s"),
        lambda: entries.resume(stranger, "st"),
        lambda: entries.remove(stranger, "s"),
        lambda: entries.run(stranger, "s"),
    ):
        with pytest.raises(NoAuthError):
            attempt()
    listed = {(e.name, e.source): e for e in entries.list_entries(stranger)}  # world readable
    assert listed[("s", "runtime")].state == "paused"
    assert listed[("st", "static")].state == "paused"
