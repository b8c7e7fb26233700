# One image for every Torua role; the role is the command:
#   docker run torua coordinator      docker run torua node (the default)      docker run torua status
# Configuration comes from the environment only (NATS_URL, TORUA_*): see docs/deployment.md.

# --- build: install the project (runtime dependencies only, no dev/test extras) into a venv -----
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# Kuzu, pyarrow, numpy, msgspec and xxhash ship manylinux (glibc) wheels: no compiler needed.
RUN pip install --no-cache-dir .

# --- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TORUA_DATA_DIR=/data
COPY deploy/healthcheck.py /usr/local/bin/torua-healthcheck
# A fixed non-root uid/gid, so volume ownership is predictable. /data is created (and owned by
# torua) before VOLUME, so a new volume mounted there starts out writable by the service.
RUN chmod 0755 /usr/local/bin/torua-healthcheck \
    && groupadd --system --gid 10001 torua \
    && useradd --system --uid 10001 --gid torua --create-home --home-dir /home/torua \
       --shell /usr/sbin/nologin torua \
    && mkdir -p /data \
    && chown torua:torua /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/torua
# Numeric, so runtimes that enforce non-root (Kubernetes runAsNonRoot) can check it.
USER 10001:10001
# Kuzu shard databases and the node's identity (node_id) live here: one volume per node.
VOLUME ["/data"]
# Exec form, so `torua` is PID 1 and receives signals itself. Both services handle SIGTERM and
# SIGINT (a node stops gracefully within 10 s and keeps its data; decommissioning is `torua drain`),
# and they start no child processes, so no init process is needed.
STOPSIGNAL SIGTERM
# The role is read from PID 1's command line; compose names it explicitly.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 CMD ["torua-healthcheck"]
ENTRYPOINT ["torua"]
CMD ["node"]
