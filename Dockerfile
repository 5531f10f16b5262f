# syntax=docker/dockerfile:1
# flopwatt collector image: core dependencies only, no torch (the collector, the fleet and
# report CLIs, and simulated agents, which need no torch, all run from it).
#
#   docker build -t flopwatt-collector .
#   docker run --rm flopwatt-collector flopwatt collector --help
#
# The agent image for NVIDIA GPUs (CUDA PyTorch base) is Dockerfile.agent.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flopwatt ./flopwatt
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# An unprivileged user; /var/lib/flopwatt (database, spools) and /tokens (bearer tokens, see
# deploy/tokens/README.md) belong to it, so named volumes mounted there start out writable.
RUN groupadd --system --gid 10001 flopwatt \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/flopwatt --create-home \
      --shell /usr/sbin/nologin flopwatt \
 && mkdir -p /tokens \
 && chown flopwatt:flopwatt /tokens \
 && chmod 0700 /tokens
COPY --from=build /wheels /wheels
# Install the wheel with its core dependencies, then fail the build if torch slipped in.
RUN python -m pip install /wheels/*.whl \
 && rm -rf /wheels \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && flopwatt --version
USER 10001:10001
WORKDIR /var/lib/flopwatt
# gRPC (agents, admin API) and HTTP (/metrics, /healthz, /report).
EXPOSE 50051 9464
CMD ["flopwatt", "--help"]
