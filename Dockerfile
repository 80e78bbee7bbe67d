# syntax=docker/dockerfile:1
# reload-sidecar image: `docker build -t reload-sidecar:0.1.0 .`
# Variants with the app's own checker: Dockerfile.nginx (nginx -t), Dockerfile.prometheus (promtool).

# Stage 1: wheels of the sidecar and every dependency. The full image has the compilers a dependency
# without a wheel for the platform would need; none of it reaches the final image.
FROM python:3.11-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar ./sidecar
# constraints.txt: the dependency versions the tests ran with, not whatever is newest on the day of the build.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

# Stage 2: the same Python, slim, with the wheels installed and nothing to build them.
FROM python:3.11-slim-bookworm
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod; the bytecode is compiled below.
# MALLOC_ARENA_MAX=2: glibc makes up to 8 malloc arenas per core for threads (asyncio.to_thread,
# the resolver); two are plenty for this sidecar and keep its RSS, paid once per pod, smaller.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2
# The wheels are bind-mounted, not copied: no layer keeps them. setuptools and wheel are build tools
# the sidecar never imports; setuptools' distutils-precedence.pth would run at every interpreter start.
# Then the standard library and site-packages (which is under it) are compiled here, once: start-up
# reads bytecode and never compiles. unchecked-hash: the sources never change in the image, so the
# bytecode stays valid whatever mtimes the layers are unpacked with.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && pip uninstall -y setuptools wheel \
    && python -m compileall -q -j 0 -f --invalidation-mode unchecked-hash -x '/(test|tests|idle_test)/' \
        "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
# Any UID works (the pod's securityContext may set another, e.g. the app's for signals); nothing in the
# image needs to be writable: the sidecar writes only to RELOAD_TARGET_DIR, its checkers to /tmp.
USER 65532:65532
EXPOSE 9533
ENTRYPOINT ["reload-sidecar"]
CMD ["run"]
