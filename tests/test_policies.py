"""Run policies (``beatleader/schedules/policies.py``): the parser, the three places, publishing.

Pure functions, no ZooKeeper: the live behaviour is ``tests/test_overlap.py``.
"""

from __future__ import annotations

import pytest

from beatleader.schedules.definitions import Definition, DefinitionError
from beatleader.schedules.policies import (
    DEFAULT,
    RunPolicy,
    parse_policy,
    policy_of,
    publish_options,
)


def test_the_shape_is_parsed_and_the_defaults_are_not_stored() -> None:
    policy = parse_policy({"overlap": "skip", "pause_after_failures": 3})
    assert policy == RunPolicy("skip", 3) and policy.watches_runs
    assert policy.as_options() == {"overlap": "skip", "pause_after_failures": 3}
    assert parse_policy({}) == DEFAULT and DEFAULT.as_options() == {}
    assert not DEFAULT.watches_runs


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("skip", "must be a mapping"),
        ({"overlap": "replace"}, "overlap 'replace' is not one of allow, skip, buffer-one"),
        ({"overlap": 1}, "is not one of"),
        ({"pause_after_failures": -1}, "pause_after_failures -1 is not a whole number"),
        ({"pause_after_failures": True}, "is not a whole number"),
        ({"pause_after_failures": 2.5}, "is not a whole number"),
        ({"overlaps": "skip"}, "unknown field(s) 'overlaps'"),
    ],
)
def test_bad_policies_are_one_line(value: object, message: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        parse_policy(value)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_static_options_and_django_headers_carry_it_and_a_bad_one_never_raises() -> None:
    assert policy_of({"beatleader": {"overlap": "skip"}}) == (RunPolicy("skip"), None)
    headers = {"headers": {"beatleader": {"overlap": "buffer-one"}, "trace": "x"}}
    assert policy_of(headers) == (RunPolicy("buffer-one"), None)
    policy, problem = policy_of({"beatleader": {"overlap": "sometimes"}})
    assert policy == DEFAULT and problem and "options.beatleader.overlap" in problem
    assert policy_of({"queue": "q"}) == (DEFAULT, None)


def test_the_policy_is_never_published() -> None:
    options = {
        "queue": "q",
        "beatleader": {"overlap": "skip"},
        "headers": {"beatleader": 1, "k": 2},
    }
    assert publish_options(options) == {"queue": "q", "headers": {"k": 2}}
    assert options["beatleader"] == {"overlap": "skip"}  # the entry's own options are untouched


def test_a_runtime_definition_stores_it_under_options() -> None:
    data = (
        b'{"task": "t", "schedule": {"every": 1.0}, "args": [], "kwargs": {}, '
        b'"options": {"beatleader": {"overlap": "skip"}}, "enabled": true, '
        b'"changed_by": "u@h", "changed_at": "2026-01-01T00:00:00+00:00"}'
    )
    definition, problem = Definition.parse(data)
    assert definition is not None, problem
    assert definition.options == {"beatleader": {"overlap": "skip"}}
    hostile, problem = Definition.parse(data.replace(b'"skip"', b'"sometimes"'))
    assert hostile is None and "overlap 'sometimes'" in problem


def test_schedule_policy_fields_parse_and_bad_ones_are_one_line() -> None:
    from datetime import datetime, timezone

    from beatleader.schedules import jitter
    from beatleader.schedules.checks import DefinitionError
    from beatleader.schedules.policies import parse_policy

    policy = parse_policy({"catchup_window": "2m", "jitter": 30, "max_runs": 5,
                           "start_at": "2030-01-01T00:00:00+01:00"})  # fmt: skip
    assert (policy.catchup, policy.catchup_window, policy.jitter) == ("skip", 120.0, 30.0)
    assert policy.start_at == datetime(2029, 12, 31, 23, tzinfo=timezone.utc)
    assert parse_policy(policy.as_options()) == policy
    assert policy.done(5, None) and not policy.done(4, None)
    assert parse_policy({"catchup": "all"}).max_catchup == 100
    for bad, part in [
        ({"catchup": "most"}, "catchup 'most' is not one of once, skip, all"),
        ({"catchup": "skip"}, "needs options.beatleader.catchup_window"),
        ({"catchup": "all", "catchup_window": 5}, "applies to options.beatleader.catchup skip"),
        ({"jitter": "soon"}, "jitter 'soon' is not a duration"),
        ({"jitter": -1}, "jitter -1 is not a duration"),
        ({"start_at": "2030-01-01T00:00"}, "UTC offset"),
        ({"max_runs": 0}, "max_runs 0 is not a whole number"),
    ]:
        with pytest.raises(DefinitionError, match=part):
            parse_policy(bad)
    offsets = [jitter.offset(f"e{n}", 1, 60.0) for n in range(500)]
    assert all(0 <= o < 60 for o in offsets) and max(offsets) - min(offsets) > 55
    assert (
        jitter.offset("e1", 1, 60.0) == jitter.offset("e1", 1, 60.0) != jitter.offset("e1", 2, 60.0)
    )
