#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s: the Kubernetes JSON
# schema check (kubernetes-validate from PyPI, which bundles the schemas of
# each Kubernetes release) and the sensor's own requirements, with pytest.
#
# The validator is installed into a virtual environment on first use.
# Environment:
#   PICKET_VENV   where the virtual environment lives (default: a
#                 directory under the cargo target directory)
# Extra arguments go to pytest.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'test-manifests: %s\n' "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=${PICKET_VENV:-$target_dir/picket-manifest-venv}
# Pinned so that a new release of the validator or its schemas cannot
# change the result of an unchanged manifest.
requirements=(kubernetes-validate==1.37.0 pytest==9.2.0)
stamp="$venv/.picket-requirements"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${requirements[*]}" ]]; then
    log "creating virtual environment $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
    echo "${requirements[*]}" > "$stamp"
fi

exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/deploy" "$@"
