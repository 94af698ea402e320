#!/usr/bin/env bash
# Builds the ddrom container image with podman (or docker: ENGINE=docker).
#
#   docker/build.sh                 # base image if missing, then the ddrom image
#   docker/build.sh --base-only     # only make sure the base image exists
#
# Variables:
#   IMAGE   tag of the ddrom image                  (default localhost/ddrom:latest)
#   BASE    tag the Dockerfile's FROM resolves to   (default docker.io/library/debian:bookworm-slim)
#   ENGINE  podman | docker                         (default podman)
#   MIRROR  Debian mirror for debootstrap           (default: the one apt uses on this host)
#   CA_BUNDLE  CA bundle given to pip inside the build as a build secret, never stored in
#              the image (default /etc/ssl/certs/ca-certificates.crt when it exists; empty: none)
#
# Where no image registry is reachable, `FROM debian:bookworm-slim` cannot be pulled: the
# base is then made locally with debootstrap (root needed) from the host's Debian mirror
# and imported under the official tag, and the build runs with --pull=never.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
IMAGE=${IMAGE:-localhost/ddrom:latest}
BASE=${BASE:-docker.io/library/debian:bookworm-slim}
ENGINE=${ENGINE:-podman}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
base_only=0
[ "${1:-}" = "--base-only" ] && base_only=1

host_mirror() {
  # first deb.debian.org-like URI of the main archive in the host's apt sources
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
      grep -Eo 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

base_exists() {
  if [ "$ENGINE" = podman ]; then podman image exists "$BASE"; else docker image inspect "$BASE" >/dev/null 2>&1; fi
}

build_base() {
  command -v debootstrap >/dev/null || { echo "build.sh: $BASE missing and debootstrap not installed" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "build.sh: $BASE missing; debootstrap needs root" >&2; exit 1; }
  local mirror tmp t0
  mirror=${MIRROR:-$(host_mirror)}
  tmp=$(mktemp -d /var/tmp/ddrom-base.XXXXXX)
  trap 'rm -rf "$tmp"' RETURN
  t0=$(date +%s)
  echo "build.sh: debootstrap bookworm from $mirror (base image $BASE)"
  debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" > "$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  # apt sources of the image: the same mirror, with updates and security
  rm -f "$tmp/rootfs/etc/apt/sources.list"
  cat > "$tmp/rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian*}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
  tar -C "$tmp/rootfs" -c . | "$ENGINE" import - "$BASE" >/dev/null
  echo "build.sh: base image $BASE imported in $(( $(date +%s) - t0 )) s"
}

if base_exists; then
  echo "build.sh: base image $BASE present"
else
  build_base
fi
[ $base_only = 1 ] && exit 0

# A minimal build context: the package, its metadata and the example cases (no venv, no outputs).
ctx=$(mktemp -d /var/tmp/ddrom-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$root/pyproject.toml" "$root/README.md" "$ctx/"
mkdir -p "$ctx/ddrom" "$ctx/cases"
(cd "$root" && tar -c --exclude='__pycache__' --exclude='*.pyc' ddrom) | tar -x -C "$ctx"
(cd "$root/cases" && find . -maxdepth 1 -type f ! -name '*.tmp*' -exec cp {} "$ctx/cases/" \;)
cp "$here/Dockerfile" "$ctx/Dockerfile"

secret=()
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
  secret=(--secret "id=ca_bundle,src=$CA_BUNDLE")
fi
pull=(--pull=never)
[ "$ENGINE" = docker ] && pull=()
t0=$(date +%s)
"$ENGINE" build "${pull[@]}" "${secret[@]}" -t "$IMAGE" -f "$ctx/Dockerfile" "$ctx"
echo "build.sh: image $IMAGE built in $(( $(date +%s) - t0 )) s"
