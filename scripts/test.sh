#!/usr/bin/env bash
# Runs every Picket test on this machine, setting up what is missing first
# (packages, Docker engine, test image). Tests that need root, Docker or eBPF
# run too: run this as root. Extra arguments go to `cargo test`.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: run as root; the sensor tests load eBPF programs and start privileged containers" >&2
    exit 1
fi

bash scripts/host-setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace "$@"
