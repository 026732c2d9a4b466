# beatleader's example image: the package plus scripts/demo_app.py, run as a non-root user.
# Default command: celery beat with beatleader's scheduler (run it on every replica);
# the worker uses the same image with another command (see docker-compose.yml, deploy/README.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY beatleader ./beatleader
# redis: kombu's Redis transport, the broker of docker-compose.yml
RUN pip install . "redis>=4.5" && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
WORKDIR /app
COPY scripts/demo_app.py ./demo_app.py

ENV PYTHONPATH=/app \
    BEATLEADER_ZK_HOSTS=zk1:2181,zk2:2181,zk3:2181 \
    DEMO_BROKER_URL=redis://redis:6379/0

USER app

# beatleader status --check: 0 a leader exists, 1 ZooKeeper reachable but no leader,
# 2 unreachable or bad input; Docker treats every non-zero code as a failed check.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["beatleader", "status", "--check", "-A", "demo_app", "--timeout", "5"]

CMD ["celery", "-A", "demo_app", "beat", "-S", "beatleader.Scheduler", "--loglevel=INFO", \
     "--schedule", "/tmp/celerybeat-schedule"]
