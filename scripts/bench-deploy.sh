#!/usr/bin/env bash
# Deployment benchmark: the sensor container under load, against the
# DaemonSet's resource settings (128M request, 256M limit, 0.9 CPU limit).
#
# Starts the server on loopback, WORKLOADS busy busybox containers (each
# execs /bin/sh and makes an HTTP connection to its own httpd in a loop),
# then the sensor container with the deployment contract's `docker run`
# flags. Prints: image sizes, time from `docker run` of the sensor to the
# first event stored at the server, the sensor's peak RSS (VmHWM), its
# memory cgroup peak, its CPU use (mean and peak per second), and the
# events stored per second.
#
# Usage: scripts/bench-deploy.sh [--skip-build]
# Environment:
#   WORKLOADS  number of workload containers (default 20)
#   DURATION   seconds to measure after the sensor started (default 60)
#   PAUSE      seconds each workload sleeps between loop turns (default 0.2)
# Run as root with a Docker engine (scripts/host-setup.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
workloads=${WORKLOADS:-20}
duration=${DURATION:-60}
pause=${PAUSE:-0.2}
log() { printf 'bench-deploy: %s\n' "$*" >&2; }
fail() {
    log "$*"
    exit 1
}

[[ $(id -u) -eq 0 ]] || fail "run as root"
docker info >/dev/null 2>&1 || fail "no Docker engine answers; run scripts/host-setup.sh"
docker image inspect picket-test/busybox:latest >/dev/null 2>&1 \
    || fail "image picket-test/busybox:latest is missing; run scripts/host-setup.sh"

token=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
prefix="picket-bench-$token"
work=$(mktemp -d "/tmp/$prefix.XXXX")
containers=()
server_pid=""

cleanup() {
    local status=$?
    for container in "${containers[@]}"; do
        docker rm -f "$container" >/dev/null 2>&1 || true
    done
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    docker rmi "picket/sensor:bench-$token" "picket/server:bench-$token" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build and image sizes -----------------------------------------------
if [[ "${1:-}" == "--skip-build" ]]; then
    target_dir=${CARGO_TARGET_DIR:-$([[ -d /work/target-shared ]] && echo /work/target-shared || echo "$root/target")}
    server_binary="$target_dir/x86_64-unknown-linux-gnu/release/picket-server"
else
    mapfile -t binaries < <("$root/scripts/build-static.sh")
    server_binary=${binaries[1]}
fi
"$root/scripts/build-images.sh" --skip-build "bench-$token" >/dev/null
sensor_image="picket/sensor:bench-$token"

image_mb() {
    docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.2f MB", $1 / 1e6 }'
}
sensor_size=$(image_mb "$sensor_image")
server_size=$(image_mb "picket/server:bench-$token")

# --- server --------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port)
http_port=$(free_port)
"$server_binary" serve --data "$work/data" --grpc-listen "127.0.0.1:$grpc_port" \
    --http-listen "127.0.0.1:$http_port" --advertise-url "https://127.0.0.1:$grpc_port" \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
    sleep 0.1
done
admin() { "$server_binary" "$@" --data "$work/data"; }
org=$(admin org create bench)
key=$(admin key create --org "$org" | grep -o 'PK1\.[A-Za-z0-9_-]*' | head -n 1)

# --- workloads -----------------------------------------------------------
log "starting $workloads workload containers"
for index in $(seq 1 "$workloads"); do
    name="$prefix-work-$index"
    containers+=("$name")
    docker run -d --name "$name" picket-test/busybox:latest sh -c "
        echo ok > /tmp/index.html; httpd -p 18080 -h /tmp; address=\$(hostname -i)
        while :; do
            /bin/sh -c 'exit 0' bench-$index
            /bin/sh -c 'exit 0' bench-$index
            /bin/sh -c 'exit 0' bench-$index
            wget -q -O /dev/null http://\$address:18080/index.html
            sleep $pause
        done" >/dev/null
done

# --- sensor --------------------------------------------------------------
# Events stored with an event time in [FROM_MS, TO_MS); the server returns
# at most 100000 per query, so a count of 100000 is a lower bound.
events_between() {
    admin events query --json --from "$1" --to "$2" --limit 100000 | wc -l
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

log "starting the sensor with the contract's docker run flags"
containers+=("$prefix-sensor")
started_ns=$(date +%s%N)
docker run -d --name "$prefix-sensor" \
    --privileged --net=host -v /:/rootfs:ro --env HOST_FS=/rootfs \
    -v /var/run/docker/netns:/netns:ro --env NET_NS=/netns \
    --env LC_INSTALLATION_KEY="$key" "$sensor_image" >/dev/null

first_event_ms=""
for _ in $(seq 1 600); do
    if [[ -n "$(admin events query --json --limit 1 2>/dev/null)" ]]; then
        first_event_ms=$((($(date +%s%N) - started_ns) / 1000000))
        break
    fi
    sleep 0.05
done
[[ -n "$first_event_ms" ]] || fail "no event reached the server within 30 s; sensor log: $(docker logs --tail 20 "$prefix-sensor" 2>&1)"

sensor_pid=$(docker inspect --format '{{.State.Pid}}' "$prefix-sensor")
sensor_id=$(docker inspect --format '{{.Id}}' "$prefix-sensor")
memory_cgroup=/sys/fs/cgroup/memory/docker/$sensor_id
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$sensor_pid/stat"; }

log "measuring for $duration s"
window_start=$(now_ms)
first_ticks=$(cpu_ticks)
previous_ticks=$first_ticks
peak_cpu=0
for _ in $(seq 1 "$duration"); do
    sleep 1
    [[ -r "/proc/$sensor_pid/stat" ]] || fail "the sensor exited; log: $(docker logs --tail 20 "$prefix-sensor" 2>&1)"
    current=$(cpu_ticks)
    peak_cpu=$(awk -v a="$current" -v b="$previous_ticks" -v t="$ticks" -v p="$peak_cpu" \
        'BEGIN { c = (a - b) / t; print (c > p ? c : p) }')
    previous_ticks=$current
done
last_ticks=$(cpu_ticks)
window_end=$(now_ms)
events_in_window=$(events_between "$window_start" "$window_end")

mean_cpu=$(awk -v a="$last_ticks" -v b="$first_ticks" -v t="$ticks" -v d="$duration" 'BEGIN { printf "%.3f", (a - b) / t / d }')
peak_rss_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$sensor_pid/status")
cgroup_peak="n/a"
if [[ -r "$memory_cgroup/memory.max_usage_in_bytes" ]]; then
    cgroup_peak=$(awk '{ printf "%.1f MB", $1 / 1e6 }' "$memory_cgroup/memory.max_usage_in_bytes")
fi
event_rate=$(awk -v n="$events_in_window" -v d="$duration" 'BEGIN { printf "%.0f", n / d }')

cat <<REPORT
workload containers:            $workloads (3 execs + 1 HTTP connection every ${pause}s each)
measured for:                   ${duration}s
sensor image size:              $sensor_size
server image size:              $server_size
docker run to first event:      ${first_event_ms} ms
sensor peak RSS (VmHWM):        $(awk -v k="$peak_rss_kb" 'BEGIN { printf "%.1f MB", k * 1024 / 1e6 }')  (limit 256 MB, request 128 MB)
sensor memory cgroup peak:      $cgroup_peak  (includes page cache)
sensor CPU, mean:               $mean_cpu cores  (limit 0.9)
sensor CPU, peak 1 s:           $(printf '%.3f' "$peak_cpu") cores
events stored per second:       $event_rate
REPORT
