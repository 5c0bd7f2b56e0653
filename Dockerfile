# syntax=docker/dockerfile:1
# One image for every Rampart role: the command picks it (`gateway`, `worker --stages validate`,
# `sink otlp`, `topics create`, ...). docs/deployment.md shows how docker-compose.yml runs it.

# ---- builder: a virtualenv with the pinned dependencies and Rampart's wheel ----
FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The venv gets no pip of its own: the base image's pip installs into it, so the final image
# carries no installer.
RUN python -m venv --without-pip /opt/rampart
# Dependencies change less often than the code: their own layer, rebuilt only with the pins.
# Wheels only (--only-binary): no dependency is compiled here (only the native module below is).
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip --python /opt/rampart/bin/python install --only-binary=:all: --no-deps -r deploy/constraints.txt
# The clean-batch fast path's extension module (native/, Rust and PyO3) is built here, into a wheel,
# with a pinned toolchain; only the installed module reaches the image. The toolchain gets its own
# layer, so changing the Rust code rebuilds just the wheel.
ARG RUST_VERSION=1.95.0
ARG MATURIN_VERSION=1.16.0
ENV PATH=/root/.cargo/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && pip install "maturin==${MATURIN_VERSION}"
COPY native native
RUN maturin build --release --locked --manifest-path native/Cargo.toml --out /native-wheels \
 && pip --python /opt/rampart/bin/python install --no-deps /native-wheels/rampart_native-*.whl
COPY pyproject.toml README.md ./
COPY rampart rampart
COPY ingest ingest
COPY processors processors
COPY sinks sinks
COPY schemas schemas
# -c keeps every dependency at its pin; a dependency added to pyproject.toml but not yet pinned
# still installs, and pip check fails the build if the set does not fit together.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip --python /opt/rampart/bin/python install --only-binary=:all: -c deploy/constraints.txt /wheels/rampart-*.whl \
 && pip --python /opt/rampart/bin/python check

# ---- the image: the virtualenv on a clean base, run as an unprivileged user ----
FROM python:3.11.14-slim-bookworm
# Nothing at run time installs packages; without pip an intruder cannot easily either. The user
# must exist by name: operator commands record it in audit events (getpass).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --gid 10001 rampart \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rampart
COPY --from=builder /opt/rampart /opt/rampart
# RAMPART_HEALTH_URL: the admin listener of the role this container runs (gateway 9464, worker 9465,
# sink 9466; docker-compose.yml sets it per service). The root filesystem can be read-only: the
# code is precompiled and faust writes only under /tmp (mount a tmpfs there).
ENV PATH=/opt/rampart/bin:$PATH \
    RAMPART_CONFIG=/etc/rampart/rampart.yaml \
    RAMPART_HEALTH_URL=http://127.0.0.1:9464/healthz \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# OTLP gRPC and HTTP (gateway); admin listeners of gateway, worker and sink.
EXPOSE 4317 4318 9464 9465 9466
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RAMPART_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["rampart"]
CMD ["--help"]
