# WS-Hub image. Not built in CI (no Docker engine there): see README.md.
#
#   docker build -t wshub .                              # the hub (last stage)
#   docker build -t wshub --build-arg EXTRAS=fast .      # the hub on uvloop
#   docker build -t wshub-listener --target listener .   # the example listener
#
# The hub reads /app/config.yaml if one is mounted, else runs on defaults;
# WSHUB_* environment variables override both (docs/configuration.md).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Optional extras of the package, e.g. "fast" (uvloop).
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wshub_core/ wshub_core/
COPY wshub_asyncio/ wshub_asyncio/
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wshub
WORKDIR /app

# The example listener (example/listener.py): answers client-new with groups.
FROM base AS listener
RUN pip install "redis>=5"
COPY example/listener.py /app/listener.py
USER wshub
CMD ["python", "/app/listener.py", "--redis", "redis://redis:6379", "--prefix", "ws-hub:"]

# The hub. Last stage, so a plain `docker build .` builds it.
FROM base AS hub
ENV WSHUB_ADDRESS=:8080
USER wshub
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('WSHUB_ADDRESS', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]
# SIGTERM: stop accepting, close clients with 1001, flush to Redis, exit 0 within shutdownTimeout.
STOPSIGNAL SIGTERM
# Reads /app/config.yaml when mounted (the working directory's config.yaml).
CMD ["wshub"]
