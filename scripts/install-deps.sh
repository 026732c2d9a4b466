#!/usr/bin/env bash
# Install what beatleader's demo and tests need on a Debian machine: ZooKeeper, Redis, RabbitMQ, Java,
# PostgreSQL (its server binaries; the tests run their own throwaway cluster),
# docker-compose (only to validate docker-compose.yml; no engine needed), Chromium and its driver
# (the dashboard's browser tests) and this package with
# its dev extra. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || missing+=(zookeeper)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)  # tests/test_rabbitmq.py starts its own node
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)  # the django-celery-beat tests start their own PostgreSQL cluster
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the TLS tests make their certificates
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the dashboard's browser tests (tests/test_web_browser.py)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)  # selenium drives chromium through it
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing+=(faketime)  # tests/test_dst_live.py: a sped-up fake clock
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q -e '.[dev]'
