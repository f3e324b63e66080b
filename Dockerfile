# syntax=docker/dockerfile:1
#
# The onceflow worker image.
#
#   docker build -t onceflow:0.1.0 .
#   docker run --rm -p 8080:8080 -e ONCEFLOW_BOOTSTRAP_SERVERS=kafka:9092 onceflow:0.1.0
#
# Two stages: `builder` builds the onceflow wheel and installs it, with its runtime dependencies
# pinned by constraints.txt, into a virtualenv at /opt/onceflow; the final stage copies only
# that virtualenv onto a clean slim base. No compiler, no build backend, no dev or test tools,
# and no source tree end up in the image. Both stages must use the same base image: the venv's
# interpreter is a symlink to the base's /usr/local/bin/python3.11.
#
# The base is pinned by tag here; in a release pipeline pin it by digest as well
# (python:3.11.14-slim-bookworm@sha256:...) so a rebuild cannot pick up a re-pushed tag.
# tests/integration/test_container_command.py runs this file's ENTRYPOINT + CMD and HEALTHCHECK
# with its ENV against a real broker: keep them in exec (JSON) form so the test can parse them.

FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependency pins first, so the layers below stay cached until they or the sources change.
COPY constraints.txt ./
RUN python -m pip install --constraint constraints.txt pip \
 && python -m venv --without-pip /opt/onceflow

COPY pyproject.toml README.md* ./
COPY app/ app/
COPY state/ state/
COPY processors/ processors/

# A regular (non-editable) install of the built wheel. PIP_CONSTRAINT also applies to the
# isolated build environment; constraints.txt leaves setuptools free, as pyproject allows.
# pip byte-compiles what it installs: at run time the root filesystem is read-only (and
# PYTHONDONTWRITEBYTECODE is set), so .pyc files must come with the image.
RUN PIP_CONSTRAINT=/src/constraints.txt python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m pip --python /opt/onceflow/bin/python install \
      --constraint constraints.txt /wheels/onceflow-*.whl \
 && /opt/onceflow/bin/onceflow --help > /dev/null


FROM python:3.11.14-slim-bookworm

ARG ONCEFLOW_UID=10001

LABEL org.opencontainers.image.title="onceflow" \
      org.opencontainers.image.description="Exactly-once stateful stream processing on Apache Kafka, for asyncio" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (matches runAsUser/fsGroup in helm/onceflow), no login shell,
# and a state directory it owns. Nothing else in the image is writable by it.
RUN groupadd --system --gid "${ONCEFLOW_UID}" onceflow \
 && useradd --system --uid "${ONCEFLOW_UID}" --gid onceflow --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin onceflow \
 && install -d -o "${ONCEFLOW_UID}" -g "${ONCEFLOW_UID}" -m 0750 /var/lib/onceflow

COPY --from=builder /opt/onceflow /opt/onceflow

ENV PATH=/opt/onceflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ONCEFLOW_STATE_DIR=/var/lib/onceflow \
    ONCEFLOW_HTTP_HOST=0.0.0.0 \
    ONCEFLOW_HTTP_PORT=8080 \
    ONCEFLOW_LOG_FORMAT=json

# The SQLite stores and checkpoints: mount a persistent volume here so a restarted worker
# restores only the changelog tail instead of whole stores.
VOLUME ["/var/lib/onceflow"]

# The CLI puts its working directory on sys.path: an image built FROM this one can COPY handler
# modules into /app and run `onceflow worker mymodule`. It is root-owned, so not writable.
WORKDIR /app

USER ${ONCEFLOW_UID}:${ONCEFLOW_UID}

EXPOSE 8080

# The CLI handles SIGTERM: it stops consuming, commits open transactions and leaves the group
# within ONCEFLOW_SHUTDOWN_GRACE_MS (give the orchestrator's grace period a margin on top).
STOPSIGNAL SIGTERM

# 200 while the worker loop runs. slim has no curl: urllib raises (exit 1) on 503 or no answer.
# The port follows ONCEFLOW_HTTP_PORT, so a container run with another port stays healthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('ONCEFLOW_HTTP_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["onceflow"]
CMD ["worker", "onceflow.examples.windowed_count"]
