#!/usr/bin/env bash
# Run beatleader's test suite against a real ZooKeeper and Redis that the suite starts itself.
# Extra arguments go to pytest, e.g. scripts/test.sh -k failover
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
ruff check beatleader tests scripts examples
mypy
exec python3 -m pytest "$@"
