#!/usr/bin/env bash
# beatleader's quick-start demo: 3 beat instances and 1 worker against a local ZooKeeper; the
# leader is killed half-way and another instance takes over. Installs what is missing first
# (Debian's zookeeper, redis-server and java; this package with its dev extra).
# Options go to scripts/demo.py, e.g. scripts/demo.sh --seconds 60 --session-timeout 5
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec python3 scripts/demo.py "$@"
