# syntax=docker/dockerfile:1
# The otelbridge image: one `otelbridge` command line for every role.
#
#   docker build -t otelbridge:0.1.0 .
#   docker run --rm otelbridge:0.1.0 --version
#
# The same image runs as
#   the bridge     `otelbridge run`: as root (user 0), with the host's containerd socket,
#                  its state directory, the host's PID namespace and CAP_SYS_ADMIN +
#                  CAP_SYS_PTRACE (docker-compose.yml, deploy/kubernetes/bridge/daemonset.yaml;
#                  docs/operations.md, "Permissions");
#   the processor  `otelbridge processor`, the gate, `otelbridge rollout`: as the image's
#                  default user, otelbridge (65532), with nothing of the host.
# Everything but the state directories and /tmp may be read-only (--read-only,
# readOnlyRootFilesystem; docker-compose.yml and deploy/kubernetes give /tmp a tmpfs).
#
# Not built on the project's machines (no Docker engine there): tests/unit/test_deploy.py
# checks this file statically (pinned base images, every COPY source present and not
# excluded by .dockerignore, the entrypoint an otelbridge command, a non-root USER); the
# `pip install .` below was resolved wheels-only with `pip install --dry-run`.
# The base image is pinned by tag; pin it by digest too in your own build
# (FROM python:3.11.14-slim-bookworm@sha256:...) for builds that repeat bit for bit,
# and raise the tag with Python's security releases.

# --- build: the package and its dependencies in a virtualenv (wheels only, no compiler)
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:

WORKDIR /src
# what `pip install .` needs: the project metadata (README.md is its long description)
# and the package; .dockerignore keeps caches and virtualenvs out of the context
COPY pyproject.toml README.md ./
COPY otelbridge ./otelbridge
RUN python -m venv /opt/otelbridge \
    && /opt/otelbridge/bin/pip install . \
    && /opt/otelbridge/bin/otelbridge --version

# --- the image: the virtualenv on the same Python, a user for the non-root roles
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="otelbridge" \
      org.opencontainers.image.description="containerd events -> OpenTelemetry container-startup traces" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# otelbridge (65532:65532) runs the processor, the gate and the rollout commands. The
# state directory is root's (the bridge's); the processor's own subdirectory is the
# user's, so a volume mounted there starts out writable for it.
RUN groupadd --system --gid 65532 otelbridge \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin otelbridge \
    && install -d -m 0755 -o root -g root /var/lib/otelbridge \
    && install -d -m 0750 -o 65532 -g 65532 /var/lib/otelbridge/processor

COPY --from=build /opt/otelbridge /opt/otelbridge

# bytecode was compiled at install time: nothing is written at run time, so a read-only
# root filesystem works; matplotlib (`otelbridge sla --html`) keeps its cache in /tmp
ENV PATH=/opt/otelbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# the bridge's status API (run --http-addr), the processor's OTLP/gRPC and API
EXPOSE 9464 4317 9465

USER 65532:65532
ENTRYPOINT ["otelbridge"]
CMD ["--help"]
