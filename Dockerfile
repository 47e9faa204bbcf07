# WS-Hub image. Built and run by CI (.ci/image, with podman on a Debian-made base).
#
#   docker build -t wshub .                              # the hub (last stage)
#   docker build -t wshub --build-arg EXTRAS=fast .      # the hub on uvloop
#   docker build -t wshub-listener --target listener .   # the example listener
#
# BASE is any image with Python 3.10+ and its venv module (python3 -m venv):
# python:3.11-slim by default; CI builds on a Debian 12 base it makes with
# debootstrap (podman build --build-arg BASE=localhost/wshub-base:...).
#
# Without network in the build: put the wheels in ./wheels first
# (pip wheel '.[example]' -w wheels, with the same Python minor version as the
# base) and the install takes them and nothing else.
#
# The hub reads /app/config.yaml if one is mounted, else runs on defaults
# (the memory broker, unless a redis.* key is set: WSHUB_REDIS_ADDRESS=...);
# WSHUB_* environment variables override both (docs/configuration.md).

ARG BASE=python:3.11-slim

# Installs the package into the virtual environment /opt/wshub, which the
# runtime stages copy: no pip, no build files and no sources in the image.
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Optional extras of the package, e.g. "fast" (uvloop).
ARG EXTRAS=""
WORKDIR /src
# wheel[s] is a pattern: the wheels in ./wheels land in /src when there are
# any, and nothing fails when there are none (a pattern may match nothing).
COPY pyproject.toml README.md wheel[s] ./
COPY wshub_core/ wshub_core/
COPY wshub_asyncio/ wshub_asyncio/
# pip lives in its own environment (/opt/pip), so /opt/wshub has none.
RUN python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/wshub \
    && if ls /src/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src; fi \
    && /opt/pip/bin/pip --python /opt/wshub/bin/python install ".${EXTRAS:+[$EXTRAS]}"

FROM build AS listener-build
RUN if ls /src/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src; fi \
    && /opt/pip/bin/pip --python /opt/wshub/bin/python install "redis>=5"

FROM ${BASE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/wshub/bin:$PATH
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wshub
WORKDIR /app

# The example listener (example/listener.py): answers client-new with groups.
FROM runtime AS listener
COPY --from=listener-build /opt/wshub /opt/wshub
COPY example/listener.py /app/listener.py
USER wshub
CMD ["python", "/app/listener.py", "--redis", "redis://redis:6379", "--prefix", "ws-hub:"]

# The hub. Last stage, so a plain `docker build .` builds it.
FROM runtime AS hub
COPY --from=build /opt/wshub /opt/wshub
ENV WSHUB_ADDRESS=:8080
USER wshub
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('WSHUB_ADDRESS', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# SIGTERM: stop accepting, close clients with 1001, flush to Redis, exit 0 within shutdownTimeout.
STOPSIGNAL SIGTERM
# Reads /app/config.yaml when mounted (the working directory's config.yaml).
CMD ["wshub"]
