#!/usr/bin/env bash
# The container engine for `make image`, `make stack` and tests/stack: podman or docker, whichever
# is installed and works, and the images docker/ needs, official or stand-ins (docker/standins/).
#
#   scripts/containers.sh engine         the engine's name (installs Debian's podman and runc
#                                         when no engine works)
#   scripts/containers.sh image          builds docker/Dockerfile as kc-tasks:local
#   scripts/containers.sh service-images  the images of docker/compose.yaml's services, as
#                                         NAME=image lines for compose's --env-file
#   scripts/containers.sh compose ARGS   the compose tool (podman-compose or docker compose)
#   scripts/containers.sh run ARGS       the engine itself (podman ARGS or docker ARGS)
#
# Each image is the official one when the engine has it or can pull it; otherwise a stand-in
# built from Debian's packages on a Debian base made once by debootstrap. Everything is cached
# by the engine (its images and build layers): a second run builds nothing.
#
# CONTAINER_ENGINE=podman|docker picks the engine; PYTHON_IMAGE, POSTGRES_IMAGE,
# RABBITMQ_IMAGE and PROMETHEUS_IMAGE name other official images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15}
RABBITMQ_IMAGE=${RABBITMQ_IMAGE:-rabbitmq:3-management}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}
KC_IMAGE=${KC_IMAGE:-kc-tasks:local}
# The stand-ins' names: localhost/ keeps any engine from looking for them in a registry, and
# their last component is not the official one's (podman matches a short name such as
# python:3.11-slim against the last component of the names it holds).
STANDIN=localhost/kc-standin
DEBIAN_BASE=$STANDIN-debian:bookworm

say() { echo "containers: $*" >&2; }

apt_install() {
  command -v apt-get >/dev/null || { say "cannot install $* here: no apt-get"; exit 1; }
  say "installing Debian's $*"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# podman as root on this kind of machine: runc and the limits of docker/podman/containers.conf;
# short image names read from Docker Hub, as docker reads them (docker/podman/registries.conf).
podman_env() {
  export CONTAINERS_CONF=$ROOT/docker/podman/containers.conf
  export CONTAINERS_REGISTRIES_CONF=$ROOT/docker/podman/registries.conf
}

pick_engine() {
  local engine=${CONTAINER_ENGINE:-}
  if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
      engine=docker
    else
      # A docker command whose daemon does not answer is no engine.
      engine=podman
    fi
  fi
  if [ "$engine" = podman ]; then
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    # compose's `init: true`
    command -v catatonit >/dev/null || [ -e /usr/libexec/podman/catatonit ] || missing+=(catatonit)
    # The network of a compose project, and its DNS (services find each other by name): only
    # recommended by podman's packages.
    [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
    [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}" iptables slirp4netns uidmap
    podman_env
  fi
  ENGINE=$engine
}

engine() {
  if [ "$ENGINE" = podman ]; then
    podman --runtime runc "$@"
  else
    docker "$@"
  fi
}

build() {  # tag, context, containerfile, extra build arguments...
  local tag=$1 context=$2 file=$3
  shift 3
  if [ "$ENGINE" = podman ]; then
    # The build's RUN steps reach the package registries through the host's network, and
    # pip trusts the host's certificate authorities (docker/podman/build-pip.conf).
    local trust=()
    if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
      trust=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/kc-host-ca-certificates.crt:ro
        -v "$ROOT/docker/podman/build-pip.conf:/etc/pip.conf:ro")
    fi
    engine build --format docker --network host --layers "${trust[@]}" -t "$tag" -f "$file" "$@" "$context" >&2
  else
    engine build -t "$tag" -f "$file" "$@" "$context" >&2
  fi
}

have() { engine image inspect "$1" >/dev/null 2>&1; }

# A short name as docker reads it: postgres:15 is docker.io/library/postgres:15.
qualified() {
  case "$1" in
    localhost/* | *.*/* | *:*/*) echo "$1" ;;
    */*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

# An official image, when the engine has it or can pull it.
official() {
  have "$(qualified "$1")" && return 0
  engine pull -q "$(qualified "$1")" >/dev/null 2>&1 && return 0
  say "cannot pull $1: using the stand-in built from Debian's packages"
  return 1
}

# The Debian base of every stand-in: debootstrap's minimal Debian 12, imported once.
debian_base() {
  have "$DEBIAN_BASE" && return 0
  command -v debootstrap >/dev/null || apt_install debootstrap
  local tree
  tree=$(mktemp -d /var/tmp/kc-debian.XXXXXX)
  say "making $DEBIAN_BASE with debootstrap (about a minute)"
  if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$tree" >"$tree.log" 2>&1; then
    tail -20 "$tree.log" >&2
    rm -rf "$tree" "$tree.log"
    exit 1
  fi
  rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* "$tree.log"
  tar -C "$tree" -c . | engine import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
  rm -rf "$tree"
}

standin() {  # name, tag
  debian_base
  build "$2" "docker/standins/$1" "docker/standins/$1/Containerfile" --build-arg "DEBIAN_IMAGE=$DEBIAN_BASE"
}

# The image to use for `official`, its stand-in built if needed.
resolve() {  # official image, stand-in name, stand-in tag
  if official "$1"; then
    echo "$1"
  else
    standin "$2" "$STANDIN-$2:$3"
    echo "$STANDIN-$2:$3"
  fi
}

image() {
  local base
  base=$(resolve "$PYTHON_IMAGE" python 3.11-slim)
  say "building $KC_IMAGE on $base"
  build "$KC_IMAGE" . docker/Dockerfile --build-arg "PYTHON_IMAGE=$base"
}

service_images() {
  echo "POSTGRES_IMAGE=$(resolve "$POSTGRES_IMAGE" postgres 15)"
  echo "RABBITMQ_IMAGE=$(resolve "$RABBITMQ_IMAGE" rabbitmq 3-management)"
  echo "PROMETHEUS_IMAGE=$(resolve "$PROMETHEUS_IMAGE" prometheus 2)"
}

compose() {
  if [ "$ENGINE" = podman ]; then
    # The virtualenv's podman-compose (pyproject.toml, extra `stack`), else Debian's.
    local tool=$ROOT/.venv/bin/podman-compose
    [ -x "$tool" ] || tool=$(command -v podman-compose || true)
    [ -n "$tool" ] || { say "podman-compose is not installed (make stack installs it)"; exit 1; }
    "$tool" "$@"
  elif docker compose version >/dev/null 2>&1; then
    docker compose "$@"
  else
    docker-compose "$@"
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
pick_engine
case "$command" in
  engine) echo "$ENGINE" ;;
  image) image ;;
  service-images) service_images ;;
  compose) compose "$@" ;;
  run) engine "$@" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
