#!/usr/bin/env bash
# Runs Picket's main job on this machine and shows the telemetry live.
#
# 1. builds the static binaries and the FROM-scratch images;
# 2. starts picket-server with its embedded store in a temporary data
#    directory, listening on loopback only;
# 3. creates an organisation and an installation key;
# 4. starts sample workload containers, one of them shaped like a
#    Kubernetes pod (kubelet labels and cgroup parent);
# 5. starts the sensor container exactly as the deployment contract's
#    `docker run` line does;
# 6. follows the events at the server as a table (time, host, event type,
#    container, pod as namespace/name or `-`, command line or path) until
#    Ctrl-C, then removes everything it started.
#
# Without a Docker engine the sensor runs directly on the host, with sample
# workloads as plain host processes, and prints that it does.
#
# Usage: scripts/demo.sh [--no-docker] [--all] [--duration SECONDS]
# Set PICKET_SKIP_SETUP=1 to skip scripts/host-setup.sh (packages, Docker).
#   --no-docker         run the sensor on the host even if a Docker engine is running
#   --all               show host events too, not only container events
#   --duration SECONDS  stop after SECONDS instead of waiting for Ctrl-C
#
# Run as root: the sensor reads every process of the host.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }
fail() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

use_docker=1
duration=""
# Host events (build tools, editors) drown the workloads on a busy machine.
filters=(--match "event/CONTAINER exists")
while (($#)); do
    case "$1" in
        --no-docker) use_docker=0 ;;
        --all) filters=() ;;
        --duration)
            duration=${2:?--duration needs a number of seconds}
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) fail "unknown argument $1; see --help" ;;
    esac
    shift
done

[[ $(id -u) -eq 0 ]] || fail "run as root: the sensor reads every process on the host and starts privileged containers"

# A fresh Debian machine has none of the build and runtime packages; the
# setup script installs what is missing and starts a Docker engine.
if [[ "${PICKET_SKIP_SETUP:-0}" != 1 ]]; then
    if [[ $use_docker == 1 ]]; then
        bash "$root/scripts/host-setup.sh" || {
            say "host setup could not start a Docker engine; continuing without Docker"
            PICKET_NO_DOCKER=1 bash "$root/scripts/host-setup.sh" || fail "host setup failed; see the messages above"
        }
    else
        PICKET_NO_DOCKER=1 bash "$root/scripts/host-setup.sh" || fail "host setup failed; see the messages above"
    fi
fi

if [[ $use_docker == 1 ]] && ! docker info >/dev/null 2>&1; then
    say "no Docker engine answers, so the sensor runs directly on the host instead of in its container"
    say "(scripts/host-setup.sh installs and starts one)"
    use_docker=0
fi

token=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
prefix="picket-demo-$token"
work=$(mktemp -d "/tmp/$prefix.XXXX")
containers=()
pids=()
sensor_image=""

cleanup() {
    local status=$?
    # A second Ctrl-C (or timeout passing its signal on) must not cut the
    # clean-up short and leave containers behind.
    trap '' INT TERM
    trap - EXIT
    say "stopping"
    for container in "${containers[@]}"; do
        docker rm -f "$container" >/dev/null 2>&1 || true
    done
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n "$sensor_image" ]]; then
        # The demo's image tags go with the demo; the layers stay cached.
        docker rmi "$sensor_image" "picket/server:demo-$token" >/dev/null 2>&1 || true
    fi
    if [[ $status -ne 0 && -f "$work/server.log" ]]; then
        say "last server log lines:"
        tail -n 15 "$work/server.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ---------------------------------------------------------------
say "building static binaries (the first build takes minutes)"
mapfile -t binaries < <("$root/scripts/build-static.sh")
sensor_binary=${binaries[0]}
server_binary=${binaries[1]}
if [[ $use_docker == 1 ]]; then
    say "building the FROM-scratch images"
    "$root/scripts/build-images.sh" --skip-build "demo-$token" >/dev/null
    sensor_image="picket/sensor:demo-$token"
fi

for binary in "$sensor_binary" "$server_binary"; do
    if "$binary" --help 2>&1 | grep -q "not built yet"; then
        fail "$(basename "$binary") on this checkout is still the placeholder; the demo needs the sensor and server merged"
    fi
done

# --- server --------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ingest_port=$(free_port)
api_port=$(free_port)
mkdir -p "$work/data"
say "starting picket-server (data: $work/data, sensors: 127.0.0.1:$ingest_port, API: 127.0.0.1:$api_port)"
"$server_binary" serve --data "$work/data" \
    --grpc-listen "127.0.0.1:$ingest_port" --http-listen "127.0.0.1:$api_port" \
    --advertise-url "https://127.0.0.1:$ingest_port" >"$work/server.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$ingest_port") 2>/dev/null; then
        break
    fi
    kill -0 "${pids[0]}" 2>/dev/null || fail "picket-server exited during start"
    sleep 0.1
done

admin() { "$server_binary" "$@" --data "$work/data"; }
org=$(admin org create demo)
key=$(admin key create --org "$org" | grep -o 'PK1\.[A-Za-z0-9_-]*' | head -n 1)
[[ -n "$key" ]] || fail "key create printed no installation key"
say "organisation $org, installation key ${key:0:16}…"

# --- workloads -----------------------------------------------------------
ensure_busybox_image() {
    docker image inspect picket-test/busybox:latest >/dev/null 2>&1 && return
    say "building the local image picket-test/busybox:latest FROM scratch with busybox-static"
    local context
    context=$(mktemp -d)
    cp /bin/busybox "$context/busybox" || fail "busybox-static is missing (apt-get install busybox-static)"
    cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/tmp", "/etc", "/root"]
CMD ["/bin/sh"]
DOCKERFILE
    docker build -q -t picket-test/busybox:latest "$context" >/dev/null 2>&1
    rm -rf "$context"
}

start_container_workloads() {
    ensure_busybox_image
    local pod_uid pod_container web_ip
    pod_uid=$(cat /proc/sys/kernel/random/uuid)
    pod_container="k8s_web_web-${token}_default_${pod_uid}_0"

    # A pod as the kubelet's Docker runtime would create it. httpd serves
    # each request from a fork without an exec, which makes no NEW_PROCESS,
    # so the loop after it gives the live table rows of this pod.
    containers+=("$pod_container")
    docker run -d --name "$pod_container" \
        --label io.kubernetes.pod.name="web-$token" \
        --label io.kubernetes.pod.namespace=default \
        --label io.kubernetes.pod.uid="$pod_uid" \
        --label io.kubernetes.container.name=web \
        --cgroup-parent "/kubepods/besteffort/pod$pod_uid" \
        picket-test/busybox:latest sh -c \
        'echo hello > /tmp/index.html; httpd -p 8080 -h /tmp; while :; do wc -c /tmp/index.html > /dev/null; sleep 5; done' >/dev/null
    web_ip=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$pod_container")

    containers+=("$prefix-client")
    docker run -d --name "$prefix-client" picket-test/busybox:latest sh -c \
        "while :; do wget -q -O /dev/null http://$web_ip:8080/index.html; sleep 3; done" >/dev/null

    containers+=("$prefix-batch")
    docker run -d --name "$prefix-batch" picket-test/busybox:latest sh -c \
        'while :; do ls /etc > /dev/null; cat /proc/loadavg > /dev/null; uname -a > /dev/null; sleep 4; done' >/dev/null
    say "started workloads: ${containers[*]}"
}

start_host_workloads() {
    (while :; do ls / >/dev/null; uname -a >/dev/null; sleep 4; done) &
    pids+=($!)
    say "started a sample host workload (pid $!)"
}

start_sensor() {
    if [[ $use_docker == 1 ]]; then
        containers+=("$prefix-sensor")
        say "starting the sensor as the deployment contract's docker run line does"
        docker run -d --name "$prefix-sensor" \
            --privileged --net=host -v /:/rootfs:ro --env HOST_FS=/rootfs \
            -v /var/run/docker/netns:/netns:ro --env NET_NS=/netns \
            --env LC_INSTALLATION_KEY="$key" "$sensor_image" >/dev/null
    else
        say "starting the sensor directly on the host (no container)"
        mkdir -p "$work/sensor"
        (cd "$work/sensor" && LC_INSTALLATION_KEY="$key" exec "$sensor_binary" -d -) >"$work/sensor.log" 2>&1 &
        pids+=($!)
    fi
}

if [[ $use_docker == 1 ]]; then
    start_container_workloads
else
    start_host_workloads
fi
start_sensor

# --- follow --------------------------------------------------------------
if [[ $use_docker == 0 ]]; then
    filters=()
fi
for _ in $(seq 1 100); do
    connected=$(admin events query --json --type CONNECTED --limit 1 2>/dev/null || true)
    [[ -n "$connected" ]] && break
    sleep 0.2
done
if [[ -n "$connected" ]]; then
    say "sensor connected: $(python3 -c 'import json, sys
event = json.loads(sys.stdin.read())["event"]
print("tier", event.get("ACQUISITION_TIER"), "| skipped:", json.dumps(event.get("TIER_REASONS", {})))' <<<"$connected")"
else
    say "no CONNECTED event after 20 s; sensor output follows"
    if [[ $use_docker == 1 ]]; then
        docker logs --tail 20 "$prefix-sensor" >&2
    else
        tail -n 20 "$work/sensor.log" >&2
    fi
fi
if ((${#filters[@]})); then
    say "following container events (--all shows host events too); Ctrl-C stops the demo and removes what it started"
else
    say "following events; Ctrl-C stops the demo and removes what it started"
fi
follow=("$server_binary" events follow --table "${filters[@]}" --data "$work/data")
if [[ -n "$duration" ]]; then
    timeout --foreground "$duration" "${follow[@]}" || true
else
    "${follow[@]}"
fi
