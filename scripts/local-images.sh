#!/usr/bin/env bash
# Build the three images and load them into a local cluster, to try the manifests before a release:
#
#   scripts/local-images.sh kind|k3d|minikube [cluster]
#
# The images get the very names and tags the manifests use (ghcr.io/reload-sidecar/reload-sidecar:X.Y.Z,
# -nginx, -prometheus; X.Y.Z = sidecar.__version__), so `kubectl apply -f manifests/nginx.yaml` then runs
# them without pulling (imagePullPolicy: IfNotPresent). IMAGE_PREFIX changes the registry/owner part
# (default ghcr.io/reload-sidecar). Needs docker (with BuildKit, the default since 23.0) or podman, and the
# cluster's own CLI; `cluster` is the kind/k3d cluster or minikube profile (default: the tool's default).
# CI cannot run this (no container engine there): .ci/run checks it with shellcheck only.
set -euo pipefail

usage() {
    echo "usage: $0 kind|k3d|minikube [cluster]" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
tool=$1
cluster=${2:-}
case "$tool" in kind | k3d | minikube) ;; *) usage ;; esac
command -v "$tool" > /dev/null || { echo "$tool is not installed" >&2; exit 1; }

cd "$(dirname "$0")/.."
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' sidecar/__init__.py)
[ -n "$version" ] || { echo "no __version__ in sidecar/__init__.py" >&2; exit 1; }
prefix=${IMAGE_PREFIX:-ghcr.io/reload-sidecar}
plain=$prefix/reload-sidecar:$version
nginx=$prefix/reload-sidecar-nginx:$version
prometheus=$prefix/reload-sidecar-prometheus:$version
images=("$plain" "$nginx" "$prometheus")

if command -v docker > /dev/null; then
    engine=docker
    export DOCKER_BUILDKIT=1
elif command -v podman > /dev/null; then
    engine=podman
else
    echo "neither docker nor podman found" >&2
    exit 1
fi

echo "building with $engine: ${images[*]}"
"$engine" build -t "$plain" -f Dockerfile .
"$engine" build -t "$nginx" -f Dockerfile.nginx .
# The prometheus variant is the plain image plus promtool: FROM the image just built.
"$engine" build -t "$prometheus" -f Dockerfile.prometheus --build-arg "BASE=$plain" .

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
