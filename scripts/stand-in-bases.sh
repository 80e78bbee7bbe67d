#!/usr/bin/env bash
# Make local stand-ins for the base images the Dockerfiles and manifests name, where no image registry
# can be reached (CI): from Debian's packages only, under the very names the Dockerfiles use, so that the
# Dockerfiles build unchanged. podman only (root: debootstrap). What each stand-in differs in from the
# real image: docs/deploying.md, "Built and run by CI".
#
#   scripts/stand-in-bases.sh    # makes each one that is missing from podman's storage; builds nothing else
#
#   docker.io/library/debian:bookworm-slim          debootstrap --variant=minbase bookworm, slimmed as the
#                                                   official image is (debuerreotype's dpkg/apt settings)
#   docker.io/nginxinc/nginx-unprivileged:1.27-bookworm  that + Debian's nginx (scripts/stand-ins/)
#   docker.io/prom/prometheus:v2.53.0               that + Debian's prometheus and promtool
#
# The RUN steps use the host's network (apt reaches Debian's mirror as the host does); PODMAN_BUILD_OPTS:
# extra `podman build` arguments (word-split).
set -euo pipefail
cd "$(dirname "$0")/.."

debian=docker.io/library/debian:bookworm-slim
nginx=docker.io/nginxinc/nginx-unprivileged:1.27-bookworm
prometheus=docker.io/prom/prometheus:v2.53.0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
read -ra build_opts <<< "--network host ${PODMAN_BUILD_OPTS:-}"

missing() { ! podman image exists "$1"; }

if missing "$debian"; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase bookworm "$root/fs" "$mirror" > "$root/debootstrap.log" 2>&1 \
        || { cat "$root/debootstrap.log" >&2; exit 1; }
    fs=$root/fs
    # debuerreotype's slimming of the official -slim image: no docs, man pages or translations, and apt
    # that keeps no package files or caches.
    cat > "$fs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
    cat > "$fs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
    echo 'Acquire::GzipIndexes "true";' > "$fs/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Acquire::Languages "none";' > "$fs/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$fs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    rm -f "$fs/etc/apt/sources.list"
    cat > "$fs/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
    find "$fs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$fs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$fs"/usr/share/{groff,info,linda,locale,man}/* "$fs"/usr/share/lintian/overrides/* \
        "$fs"/var/cache/apt/archives/*.deb "$fs"/var/cache/apt/*.bin "$fs"/var/lib/apt/lists/* \
        "$fs"/var/log/*.log "$fs"/var/log/apt/* "$fs"/tmp/* "$fs"/root/.bash_history
    : > "$fs/etc/hostname" && : > "$fs/etc/resolv.conf" && rm -f "$fs/etc/machine-id"
    tar --numeric-owner --xattrs -C "$fs" -c . | podman import -q --change 'CMD ["bash"]' - "$debian" > /dev/null
    rm -rf "$root"
    trap - EXIT
    echo "stand-in $debian: $(podman image inspect --format '{{.Size}}' "$debian") bytes"
fi
# The two app stand-ins build side by side (apt's downloads and dpkg overlap); each one's output is shown
# only if it fails.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
if missing "$nginx"; then
    podman build -q "${build_opts[@]}" -t "$nginx" -f scripts/stand-ins/nginx-unprivileged.Containerfile \
        scripts/stand-ins > "$logs/nginx" 2>&1 &
    pids+=($!)
fi
if missing "$prometheus"; then
    podman build -q "${build_opts[@]}" -t "$prometheus" -f scripts/stand-ins/prometheus.Containerfile \
        scripts/stand-ins > "$logs/prometheus" 2>&1 &
    pids+=($!)
fi
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" = 1 ]; then
    cat "$logs"/* >&2
    exit 1
fi
if [ ${#pids[@]} -gt 0 ]; then
    echo "stand-in $nginx: $(podman run --rm --network none "$nginx" nginx -v 2>&1)"
    echo "stand-in $prometheus: $(podman run --rm --network none --entrypoint /bin/prometheus "$prometheus" --version 2>&1 | head -1)"
fi
