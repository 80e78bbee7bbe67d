# syntax=docker/dockerfile:1
# reload-sidecar image: `docker build -t reload-sidecar:0.1.0 .`
# Variants with the app's own checker: Dockerfile.nginx (nginx -t), Dockerfile.prometheus (promtool).
# Base: Debian bookworm-slim with Debian's python3 (3.11), the same Python and Debian the nginx variant
# runs on (its nginx image is bookworm); a base CI can remake from Debian's packages (docs/deploying.md).

# Stage 1: a virtualenv with the sidecar and its dependencies. Wheels only (--only-binary): every
# dependency has one for linux/amd64 and linux/arm64, and a missing one fails the build here instead of
# needing compilers. Compiled here, once (--no-compile + compileall): the copy below brings the bytecode
# with it and no later layer rewrites it. unchecked-hash: the sources never change in the image, so the
# bytecode stays valid whatever mtimes the layers are unpacked with.
FROM debian:bookworm-slim AS venv
# DL3008: python3 comes from bookworm, which fixes its version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# PIP_CERT: a CA bundle for this stage's pip only, where PyPI is reached through a TLS-inspecting proxy
# (scripts/local-images.sh passes the host's; unset, pip trusts its own bundle). No later stage sees it.
ARG PIP_CERT
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar ./sidecar
# constraints.txt: the dependency versions the tests ran with, not whatever is newest on the day of the build.
# setuptools is a build tool the sidecar never imports; its distutils-precedence.pth
# would run at every interpreter start.
RUN python3 -m venv /opt/reload-sidecar \
    && /opt/reload-sidecar/bin/pip install --no-cache-dir --no-compile --only-binary=:all: -c constraints.txt . \
    && /opt/reload-sidecar/bin/pip uninstall -y setuptools \
    && python3 -m compileall -q -j 0 -f --invalidation-mode unchecked-hash -x '/(test|tests|idle_test)/' \
        /opt/reload-sidecar/lib

# Stage 2: bookworm-slim + Debian's python3 + the virtualenv; no pip cache, no apt lists.
FROM debian:bookworm-slim
# The standard library compiled in the same layer that installs it (Debian's own compile there is
# timestamp-based; a later layer rewriting it would store the bytecode twice).
# DL3008: python3 comes from bookworm, which fixes its version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m compileall -q -j 0 -f --invalidation-mode unchecked-hash -x '/(test|tests|idle_test)/' \
        /usr/lib/python3.11
COPY --from=venv /opt/reload-sidecar /opt/reload-sidecar
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod; the bytecode is compiled above.
# MALLOC_ARENA_MAX=2: glibc makes up to 8 malloc arenas per core for threads (asyncio.to_thread,
# the resolver); two are plenty for this sidecar and keep its RSS, paid once per pod, smaller.
ENV PATH=/opt/reload-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2
# Any UID works (the pod's securityContext may set another, e.g. the app's for signals); nothing in the
# image needs to be writable: the sidecar writes only to RELOAD_TARGET_DIR, its checkers to /tmp.
USER 65532:65532
EXPOSE 9533
ENTRYPOINT ["reload-sidecar"]
CMD ["run"]
