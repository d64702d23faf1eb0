# syntax=docker/dockerfile:1
#
# The Strandline daemon in a container.
#
#   docker build -t strandline .
#   docker run --rm -v "$PWD/examples/data:/data:ro" -v strandline-state:/state \
#       -e STRANDLINE_KAFKA_BOOTSTRAP=kafka:9092 strandline
#
# By default it runs `strandline watch /data`: every immediate subfolder of /data is a dataset.
# The catalog and the outbox live in /state (STRANDLINE_STATE_DIR): keep it on a volume, or
# every restart starts versioning from scratch. Any STRANDLINE_* variable configures the
# daemon; for a config file, mount it and set STRANDLINE_CONFIG=/path/to/strandline.toml
# (with [[datasets]] in it, run `watch` with no folder: CMD ["watch"]).

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: install the package and its dependencies into a virtualenv -----------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The whole repository less what .dockerignore leaves out; only the installed package moves
# on to the runtime image.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . \
    && strandline --version

# -- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="strandline" \
      org.opencontainers.image.description="Event-driven data-change detection: watch data, version every change, publish it to Kafka." \
      org.opencontainers.image.licenses="Apache-2.0"

ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" strandline \
    && useradd --system --uid "${UID}" --gid strandline --home-dir /home/strandline --create-home \
       --shell /usr/sbin/nologin strandline \
    && mkdir -p /state \
    && chown strandline:strandline /state

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STRANDLINE_STATE_DIR=/state

# Numeric, so that orchestrators can check runAsNonRoot.
USER ${UID}:${GID}
WORKDIR /home/strandline

# Declared after the chown above, so a new volume here starts owned by the strandline user.
VOLUME ["/state"]

# The daemon finishes its current version and flushes the outbox on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["strandline"]
CMD ["watch", "/data"]
