#!/usr/bin/env bash
# Prepares a Debian 12 machine to build and test Picket: installs the build
# and test packages, starts a Docker engine, and builds the local test image.
# Safe to run again: each step checks what is already there.
#
# Environment:
#   PICKET_SKIP_APT=1     do not call apt-get (packages already installed)
#   PICKET_NO_DOCKER=1    skip the Docker engine and the test image
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
config_file=/etc/docker/daemon.json
docker_config_changed=0
log() { printf 'host-setup: %s\n' "$*" >&2; }

packages=(
    build-essential pkg-config clang llvm libelf-dev zlib1g-dev bpftool bpftrace
    busybox-static protobuf-compiler iproute2 jq libcap2-bin procps file
    docker.io python3-venv
)

install_packages() {
    [[ "${PICKET_SKIP_APT:-0}" == 1 ]] && return
    local missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        log "all packages present"
        return
    fi
    log "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# True when the capability bounding set lacks a capability the kernel supports,
# which makes runc fail to start --privileged containers.
bounding_set_is_short() {
    local last mask full
    last=$(cat /proc/sys/kernel/cap_last_cap)
    mask=$((16#$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)))
    full=$(((1 << (last + 1)) - 1))
    (( (mask & full) != full ))
}

configure_docker() {
    local config=$config_file
    mkdir -p /etc/docker
    [[ -f "$config" ]] || echo '{}' > "$config"
    if bounding_set_is_short; then
        log "capability bounding set is short; registering the runc-capfix runtime as dockerd's default"
        install -D -m 0755 "$here/runc-capfix" /usr/local/lib/picket/runc-capfix
        jq '.runtimes["picket-capfix"] = {"path": "/usr/local/lib/picket/runc-capfix"}
            | .["default-runtime"] = "picket-capfix"' "$config" > "$config.new"
        if cmp -s "$config" "$config.new"; then
            rm "$config.new"
        else
            mv "$config.new" "$config"
            docker_config_changed=1
        fi
    fi
}

# A dockerd that was already running (apt starts it on systemd hosts) reads
# daemon.json only at start.
apply_docker_config() {
    [[ "$docker_config_changed" == 1 ]] || return 0
    docker info >/dev/null 2>&1 || return 0
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker; then
        log "restarting docker.service to apply $config_file"
        systemctl restart docker
    else
        log "dockerd is running with an older /etc/docker/daemon.json; restart it to use the picket-capfix runtime"
    fi
}

start_docker() {
    if docker info >/dev/null 2>&1; then
        log "docker engine already running"
        return
    fi
    log "starting dockerd (log: /var/log/picket-dockerd.log)"
    setsid dockerd >/var/log/picket-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 1
    done
    log "dockerd did not start within 60 s; last log lines:"
    tail -n 20 /var/log/picket-dockerd.log >&2
    exit 1
}

# A FROM-scratch image holding only busybox-static, for workload containers in
# tests and the demo. No registry is involved.
build_test_image() {
    local context
    context=$(mktemp -d)
    cp /bin/busybox "$context/busybox"
    cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/tmp", "/etc", "/root"]
RUN ["/bin/sh", "-c", "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> /etc/passwd"]
CMD ["/bin/sh"]
DOCKERFILE
    docker build -q -t picket-test/busybox:latest "$context" >/dev/null
    rm -rf "$context"
    log "built image picket-test/busybox:latest"
}

# Debian 12's own Rust (1.63) is too old for the workspace, so the toolchain
# is expected from rustup rather than installed here.
check_rust() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found; install Rust 1.85 or later with rustup (https://rustup.rs) and run this again"
        exit 1
    fi
}

install_packages
check_rust
if [[ "${PICKET_NO_DOCKER:-0}" != 1 ]]; then
    configure_docker
    apply_docker_config
    start_docker
    build_test_image
fi
log "ready"
