#!/usr/bin/env bash
# Build the three images and load them into a local cluster, to try the manifests before a release:
#
#   scripts/local-images.sh kind|k3d|minikube [cluster]
#   scripts/local-images.sh build        # only build them (CI: .ci/run, then the container tests run them)
#
# The images get the very names and tags the manifests use (ghcr.io/reload-sidecar/reload-sidecar:X.Y.Z,
# -nginx, -prometheus; X.Y.Z = sidecar.__version__), so `kubectl apply -f manifests/nginx.yaml` then runs
# them without pulling (imagePullPolicy: IfNotPresent). IMAGE_PREFIX changes the registry/owner part
# (default ghcr.io/reload-sidecar). Needs docker (with BuildKit, the default since 23.0) or podman, and the
# cluster's own CLI; `cluster` is the kind/k3d cluster or minikube profile (default: the tool's default).
# Every build starts from nothing (--no-cache): a layer cache can hand back a stale layer (podman 4.3
# reused a cached stage and the image kept the old version), and a release is built without one anyway.
# With podman the RUN steps use the host's network, and the host's pip CA bundle (PIP_CERT, else
# `pip config get global.cert`) is mounted for the build stage's pip, for PyPI behind a TLS-inspecting
# proxy (Dockerfile, ARG PIP_CERT); with docker, pip trusts its own bundle.
set -euo pipefail

usage() {
    echo "usage: $0 kind|k3d|minikube [cluster] | $0 build" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
tool=$1
cluster=${2:-}
case "$tool" in
    kind | k3d | minikube) command -v "$tool" > /dev/null || { echo "$tool is not installed" >&2; exit 1; } ;;
    build) [ $# -eq 1 ] || usage ;;
    *) usage ;;
esac

cd "$(dirname "$0")/.."
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' sidecar/__init__.py)
[ -n "$version" ] || { echo "no __version__ in sidecar/__init__.py" >&2; exit 1; }
prefix=${IMAGE_PREFIX:-ghcr.io/reload-sidecar}
plain=$prefix/reload-sidecar:$version
nginx=$prefix/reload-sidecar-nginx:$version
prometheus=$prefix/reload-sidecar-prometheus:$version
images=("$plain" "$nginx" "$prometheus")

# CONTAINER_ENGINE=docker|podman picks one (a docker CLI without a daemon may be installed beside podman).
engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker > /dev/null; then
        engine=docker
    elif command -v podman > /dev/null; then
        engine=podman
    else
        echo "neither docker nor podman found" >&2
        exit 1
    fi
fi
case "$engine" in
    docker) export DOCKER_BUILDKIT=1 ;;
    podman) ;;
    *) echo "CONTAINER_ENGINE must be docker or podman, not $engine" >&2; exit 2 ;;
esac

build_opts=(--no-cache)
if [ "$engine" = podman ]; then
    build_opts+=(--network host)
    ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2> /dev/null || true)}
    # /dev is a tmpfs in every RUN step: the mount point never lands in a layer.
    if [ -n "$ca" ] && [ -f "$ca" ]; then build_opts+=(-v "$ca:/dev/pip-ca.crt:ro" --build-arg PIP_CERT=/dev/pip-ca.crt); fi
fi

echo "building with $engine: ${images[*]}"
"$engine" build "${build_opts[@]}" -t "$plain" -f Dockerfile .
"$engine" build "${build_opts[@]}" -t "$nginx" -f Dockerfile.nginx .
# The prometheus variant is the plain image plus promtool: FROM the image just built.
"$engine" build "${build_opts[@]}" -t "$prometheus" -f Dockerfile.prometheus --build-arg "BASE=$plain" .
if [ "$tool" = build ]; then
    echo "built: ${images[*]}"
    exit 0
fi

# kind and k3d read docker's images by name; from podman, and for minikube, go through an archive.
archive=
cleanup() { if [ -n "$archive" ]; then rm -f "$archive"; fi; }
trap cleanup EXIT
save_archive() {
    archive=$(mktemp --suffix=.tar)
    if [ "$engine" = podman ]; then
        podman save --multi-image-archive -o "$archive" "${images[@]}"
    else
        docker save -o "$archive" "${images[@]}"
    fi
}

echo "loading into $tool${cluster:+ ($cluster)}"
case "$tool" in
    kind)
        if [ "$engine" = docker ]; then
            kind load docker-image ${cluster:+--name "$cluster"} "${images[@]}"
        else
            save_archive
            kind load image-archive ${cluster:+--name "$cluster"} "$archive"
        fi
        ;;
    k3d)
        if [ "$engine" = docker ]; then
            k3d image import ${cluster:+--cluster "$cluster"} "${images[@]}"
        else
            save_archive
            k3d image import ${cluster:+--cluster "$cluster"} "$archive"
        fi
        ;;
    minikube)
        save_archive
        minikube image load ${cluster:+--profile "$cluster"} "$archive"
        ;;
esac

echo "done: ${images[*]}"
echo "next: kubectl apply -f manifests/nginx.yaml (or -k manifests/examples/component/)"
