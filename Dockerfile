# syntax=docker/dockerfile:1
#
# cekura-worker: `docker build -t cekura-worker .` then `docker run cekura-worker` (runs `cekura-worker run`).
# Stage 1 builds wheels of the project and of exactly the runtime dependencies pinned in requirements.lock
# (the lock also pins dev and bench extras; constraints install only what the project needs). Stage 2 installs
# those wheels into a slim image with no compiler, no pip cache and no wheel files left behind.
# Pin the base by digest too when you publish: `FROM python:3.11.14-slim-bookworm@sha256:<digest>`.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY config ./config
COPY actors ./actors
COPY worker ./worker
# The Cekura simulator: a package of its own that the worker never imports; compose's simulator runs it.
COPY simulator ./simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements.lock .

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cekura-worker" \
      org.opencontainers.image.description="Runs Cekura's asynchronous API jobs reliably at volume: Redis in, Dramatiq workers, one result event per job." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CEKURA_METRICS_PORT=9100
# The wheels are bind-mounted from the build stage, so none of them ends up in a layer; setuptools and wheel
# (build tools the slim 3.11 image ships) go too, since nothing here builds packages.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && pip uninstall --yes setuptools wheel \
    && groupadd --system --gid 10001 cekura \
    && useradd --system --uid 10001 --gid cekura --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cekura
WORKDIR /app
USER 10001:10001
# /metrics when CEKURA_METRICS_PORT is set (it is, to 9100, by default in this image).
EXPOSE 9100
# Liveness: exit 0 while a worker process in this container beat (locally) within 3 heartbeat intervals; it never
# asks Redis, so a Redis outage, which the workers ride out, does not get the container restarted.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["cekura-worker", "healthcheck", "--liveness"]
# Exec form: the supervisor is PID 1's direct child (or PID 1) and gets SIGTERM, which stops the workers gracefully
# within CEKURA_SHUTDOWN_TIMEOUT_S (20 s by default): give `docker stop` a longer grace, e.g. `--time 30`.
ENTRYPOINT ["cekura-worker"]
CMD ["run"]
