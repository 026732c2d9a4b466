#!/usr/bin/env bash
# Run beatleader's test suite against a real ZooKeeper and Redis that the suite starts itself, then
# the core tests again against the lowest celery and kazoo it supports (scripts/test-lowest-celery.sh;
# skip that with BEATLEADER_SKIP_LOWEST=1). Extra arguments go to the main pytest run only, e.g.
# scripts/test.sh -k failover. The main run uses $BEATLEADER_TEST_WORKERS pytest processes
# (default 2, one test file each at a time: most tests wait on real processes, not on the CPU;
# 1 runs serially). The exit status is the first failure's.
set -euo pipefail
export BEATLEADER_REQUIRE_RABBITMQ=1  # tests/test_rabbitmq.py fails instead of skipping without RabbitMQ
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ruff check beatleader tests scripts examples
mypy
status=0
workers="${BEATLEADER_TEST_WORKERS:-2}"
parallel=()
[ "$workers" = 1 ] || parallel=(-n "$workers" --dist loadfile)
python3 -m pytest "${parallel[@]}" "$@" || status=$?
if [ "${BEATLEADER_SKIP_LOWEST:-0}" != 1 ]; then
    scripts/test-lowest-celery.sh || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
fi
exit "$status"
