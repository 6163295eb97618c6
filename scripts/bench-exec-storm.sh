#!/usr/bin/env bash
# Exec storm benchmark of the sensor's process tiers.
#
# For each place (host, container), tier (netlink, procpoll) and rate, it
# starts the sensor with HOST_FS=/ --stdout, runs scripts/exec-storm.c for
# DURATION seconds, and prints: execs started, the share reported as
# NEW_PROCESS, the share with the full command line, the sensor's CPU seconds
# per 1,000 execs and its peak RSS (VmHWM). "max" runs two generators with no
# rate limit, one per core of a two-core machine.
#
# Usage (as root, Docker running, picket-test/busybox:latest built):
#   cargo build --release -p picket-sensor
#   scripts/bench-exec-storm.sh [SENSOR_BINARY]
# Environment: DURATION (default 30), RATES (default "2000 max"),
#   TIERS (default "netlink procpoll"), PLACES (default "host container").
set -euo pipefail

cd "$(dirname "$0")/.."
sensor=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/picket-sensor}")
duration=${DURATION:-30}
rates=${RATES:-"2000 max"}
tiers=${TIERS:-"netlink procpoll"}
places=${PLACES:-"host container"}
image=picket-test/busybox:latest

work=$(mktemp -d /tmp/picket-bench.XXXXXX)
sensor_pid=""
cleanup() {
    if [[ -n $sensor_pid ]]; then kill -TERM "$sensor_pid" 2>/dev/null || true; fi
    docker ps -aq --filter "name=^core-bench-" | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cc -O2 -static -o "$work/exec-storm" scripts/exec-storm.c

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Runs the storm; prints "started failed seconds" summed over generators.
run_storm() {
    local place=$1 tag=$2 rate=$3
    local generators=1 per_rate=$rate
    if [[ $rate == max ]]; then generators=2; per_rate=0; fi
    local pids=() i
    for ((i = 0; i < generators; i++)); do
        if [[ $place == host ]]; then
            "$work/exec-storm" "$tag" "$per_rate" "$duration" > "$work/gen.$i" &
        else
            docker run --rm --name "core-bench-$tag-$i" --network none \
                -v "$work/exec-storm:/exec-storm:ro" "$image" \
                /exec-storm "$tag" "$per_rate" "$duration" > "$work/gen.$i" &
        fi
        pids+=($!)
    done
    wait "${pids[@]}"
    cat "$work"/gen.* | awk '{ s += $1; f += $2; if ($3 > t) t = $3 } END { print s, f, t }'
    rm -f "$work"/gen.*
}

printf '%-9s %-8s %-5s %8s %9s %9s %9s %12s %9s %8s\n' \
    place tier rate execs execs/s reported full_cmd cpu_s/1k_exec peak_rss dropped
for place in $places; do
    for tier in $tiers; do
        for rate in $rates; do
            tag="$place-$tier-$rate-$$"
            out="$work/out.jsonl"
            HOST_FS=/ RUST_LOG=warn "$sensor" --stdout --tier "$tier" > "$out" 2> "$work/sensor.log" &
            sensor_pid=$!
            for _ in $(seq 100); do grep -q '"CONNECTED"' "$out" 2>/dev/null && break; sleep 0.1; done
            sleep 2
            before=$(cpu_ticks "$sensor_pid")
            read -r started failed seconds < <(run_storm "$place" "$tag" "$rate")
            sleep 3
            after=$(cpu_ticks "$sensor_pid")
            hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$sensor_pid/status")
            kill -TERM "$sensor_pid"
            wait "$sensor_pid" || true
            sensor_pid=""
            python3 - "$out" "$tag" "$started" "$failed" "$seconds" "$before" "$after" "$hwm" \
                "$place" "$tier" "$rate" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
out, tag, started, failed, seconds, before, after, hwm, place, tier, rate, hz = sys.argv[1:]
started, seconds, hz = int(started), float(seconds), int(hz)
prefix = f"true storm-{tag}-"
records = [json.loads(line) for line in open(out, encoding="utf-8")]
generators = {
    r["event"]["PROCESS_ID"] for r in records
    if r["routing"]["event_type"] == "NEW_PROCESS"
    and f"exec-storm {tag} " in r["event"].get("COMMAND_LINE", "")
}
reported, full = set(), set()
dropped = 0
for r in records:
    event = r["event"]
    if r["routing"]["event_type"] == "DATA_DROPPED":
        dropped += event.get("COUNT", 0)
    if r["routing"]["event_type"] != "NEW_PROCESS":
        continue
    key = r["routing"].get("this") or r["routing"]["event_id"]
    command = event.get("COMMAND_LINE", "")
    if command.startswith(prefix):
        reported.add(key)
        full.add(key)
    elif event.get("PARENT_PROCESS_ID") in generators and event["PROCESS_ID"] not in generators:
        reported.add(key)
cpu = (int(after) - int(before)) / hz
per_k = cpu / (started / 1000) if started else float("nan")
share = lambda n: f"{100 * n / started:.1f}%" if started else "n/a"
print(f"{place:<9} {tier:<8} {rate:<5} {started:>8} {started / seconds:>9.0f} {share(len(reported)):>9} "
      f"{share(len(full)):>9} {per_k:>12.3f} {int(hwm) / 1024:>7.1f}M {dropped:>8}")
EOF
        done
    done
done
