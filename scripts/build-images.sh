#!/usr/bin/env bash
# Builds the FROM-scratch images picket/sensor and picket/server from
# deploy/*.Dockerfile and the static binaries of scripts/build-static.sh.
# Nothing is pulled: scratch is no image, and each build context is staged
# here with only the binary and an empty directory tree.
#
# Usage: scripts/build-images.sh [--skip-build] [TAG]
#   --skip-build  use the binaries already built instead of running
#                 scripts/build-static.sh
#   TAG           image tag (default: latest)
#
# Environment:
#   PICKET_SENSOR_IMAGE  sensor image name (default: picket/sensor)
#   PICKET_SERVER_IMAGE  server image name (default: picket/server)
#   CARGO_TARGET_DIR     as for scripts/build-static.sh
#
# Prints "<image>:<tag>" for each built image on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'build-images: %s\n' "$*" >&2; }

skip_build=0
if [[ "${1:-}" == "--skip-build" ]]; then
    skip_build=1
    shift
fi
tag=${1:-latest}
sensor_image=${PICKET_SENSOR_IMAGE:-picket/sensor}
server_image=${PICKET_SERVER_IMAGE:-picket/server}

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers on $(docker context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null || echo 'the default socket'); start one (scripts/host-setup.sh does) and run again"
    exit 1
fi

if [[ $skip_build == 1 ]]; then
    if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
        if [[ -d /work/target-shared ]]; then CARGO_TARGET_DIR=/work/target-shared; else CARGO_TARGET_DIR="$root/target"; fi
    fi
    release="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
    binaries=("$release/picket-sensor" "$release/picket-server")
else
    mapfile -t binaries < <("$root/scripts/build-static.sh")
fi

# Stages a context with BINARY, an empty rootfs/ holding DIRS, and the
# Dockerfile, then builds IMAGE from it.
build_one() {
    local image=$1 dockerfile=$2 binary=$3
    shift 3
    local context
    if [[ ! -x "$binary" ]]; then
        log "missing executable $binary; run scripts/build-static.sh first"
        return 1
    fi
    context=$(mktemp -d)
    cp "$binary" "$context/"
    mkdir -p "$context/rootfs"
    for directory in "$@"; do
        mkdir -p "$context/rootfs/$directory"
    done
    chmod 1777 "$context/rootfs/tmp"
    cp "$dockerfile" "$context/Dockerfile"

    log "building $image:$tag"
    # The output is shown only on failure, because without buildx the
    # Docker CLI prints a deprecation notice for the classic builder on
    # every build.
    local status=0
    docker build --quiet --tag "$image:$tag" "$context" >"$context.log" 2>&1 || status=$?
    if ((status != 0)); then
        log "docker build of $image:$tag failed:"
        cat "$context.log" >&2
    fi
    rm -rf "$context" "$context.log"
    ((status == 0)) || return "$status"
    echo "$image:$tag"
}

for binary in "${binaries[@]}"; do
    case "$(basename "$binary")" in
        picket-sensor) build_one "$sensor_image" "$root/deploy/sensor.Dockerfile" "$binary" tmp ;;
        picket-server) build_one "$server_image" "$root/deploy/server.Dockerfile" "$binary" tmp data ;;
    esac
done
