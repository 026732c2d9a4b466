#!/usr/bin/env bash
# Run beatleader's core and contract tests against the LOWEST celery, kazoo, Django and
# django-celery-beat that pyproject.toml allows, in a
# virtualenv of their own (the newest versions are what scripts/test.sh runs against).
#
# The floors below must equal pyproject's: pip installs this package together with them, so a
# floor that pyproject does not allow fails here. Needs network access to PyPI. Extra arguments go
# to pytest. The venv is kept in $BEATLEADER_LOWEST_VENV (default: .venv-lowest) for reuse; it is
# made with $BEATLEADER_LOWEST_PYTHON (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

LOWEST_CELERY="celery==5.3.0"
LOWEST_KAZOO="kazoo==2.11.0"
LOWEST_DJANGO="django==4.2"
LOWEST_DJANGO_CELERY_BEAT="django-celery-beat==2.5.0"
venv="${BEATLEADER_LOWEST_VENV:-.venv-lowest}"
python="${BEATLEADER_LOWEST_PYTHON:-python3}"  # e.g. python3.10, the lowest Python too

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -e . "$LOWEST_CELERY" "$LOWEST_KAZOO" "$LOWEST_DJANGO" "$LOWEST_DJANGO_CELERY_BEAT" \
    "psycopg2-binary>=2.9" "pytest>=7.4" "pytest-timeout>=2.1" "pytest-xdist>=3.5"
rm -rf beatleader.egg-info build  # by-products of the editable build; the venv does not use them
"$venv/bin/python" - "$LOWEST_CELERY" "$LOWEST_KAZOO" "$LOWEST_DJANGO" \
    "$LOWEST_DJANGO_CELERY_BEAT" <<'PY'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    assert version(name) == wanted, f"{name} {version(name)} installed, expected {wanted}"
    print(f"lowest supported: {name} {version(name)}")
PY
# The SQLite case of test_django_beat.py is left out: under Django 4.2, three beat processes and
# the test writing one SQLite file fail with "database is locked" (its PostgreSQL case runs).
workers="${BEATLEADER_TEST_WORKERS:-2}"  # as scripts/test.sh: one test file per worker at a time
parallel=()
[ "$workers" = 1 ] || parallel=(-n "$workers" --dist loadfile)
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "${parallel[@]}" \
    --deselect tests/test_django_beat.py::test_sqlite_rows_beside_static_entries_clocked_one_off_status_and_a_kill \
    tests/test_config.py tests/test_state.py tests/test_election.py tests/test_embedded.py \
    tests/test_celery_compat.py tests/test_scheduler_contract.py tests/test_compatibility_doc.py \
    tests/test_public_names.py tests/test_django_contract.py tests/test_django_beat.py \
    "tests/test_failover.py::test_three_instances_exactly_one_sends_and_followers_stay_idle" \
    "tests/test_failover.py::test_worker_dash_b_with_the_entry_point_alias_elects_one_sender" \
    "tests/test_failover.py::test_sigkill_of_the_leader_fails_over_within_the_session_timeout" \
    "$@"
