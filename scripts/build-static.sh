#!/usr/bin/env bash
# Builds picket-sensor and picket-server as static executables (release
# profile, glibc linked statically) and checks that neither needs a dynamic
# loader, so each runs alone in a FROM-scratch image or on any x86_64 host.
#
# Prints the path of each binary on stdout, one a line. Diagnostics go to
# stderr.
#
# Environment:
#   CARGO_TARGET_DIR   cargo's target directory (default: /work/target-shared
#                      when it exists, else ./target)
#   PICKET_CARGO_JOBS  value for `cargo build --jobs` (default: cargo's own)
#
# Why glibc and not musl: only the x86_64-unknown-linux-gnu target is
# installed here. `-C target-feature=+crt-static` on that target links glibc
# statically. `--target` is passed explicitly so that the flag applies to
# the binaries only, not to build scripts and proc macros, which must stay
# dynamic.
#
# Static glibc caveat: the NSS functions (getaddrinfo for host names,
# getpwuid, getgrgid) still try to dlopen libnss_*.so modules of the exact
# glibc version used to link. A FROM-scratch image has none, so name lookups
# through NSS only see what glibc resolves without them. See docs/deploy.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
log() { printf 'build-static: %s\n' "$*" >&2; }

if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
    if [[ -d /work/target-shared ]]; then
        export CARGO_TARGET_DIR=/work/target-shared
    else
        export CARGO_TARGET_DIR="$root/target"
    fi
fi
export PATH="$HOME/.cargo/bin:$PATH"

jobs=()
[[ -n "${PICKET_CARGO_JOBS:-}" ]] && jobs=(--jobs "$PICKET_CARGO_JOBS")

log "cargo build --release --target $target (crt-static) in $CARGO_TARGET_DIR"
(
    cd "$root"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$target" "${jobs[@]}" \
        -p picket-sensor -p picket-server --bins
)

# Fails unless the file is a statically linked ELF executable: `file` must
# say so and ldd must find no shared libraries.
check_static() {
    local binary=$1 description
    description=$(file -b "$binary")
    case "$description" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *)
            log "$binary is not static: $description"
            return 1
            ;;
    esac
    # For a static file, glibc's ldd prints "not a dynamic executable"
    # (static) or "statically linked" (static-pie) and lists no library.
    local libraries
    libraries=$(ldd "$binary" 2>&1 || true)
    if [[ "$libraries" == *"=>"* || "$libraries" == *"ld-linux"* ]]; then
        log "$binary has dynamic dependencies: $(tr '\n' ' ' <<<"$libraries")"
        return 1
    fi
}

for name in picket-sensor picket-server; do
    binary="$CARGO_TARGET_DIR/$target/release/$name"
    if [[ ! -x "$binary" ]]; then
        log "missing $binary after the build"
        exit 1
    fi
    check_static "$binary"
    log "$name: $(file -b "$binary" | cut -d, -f1-2), $(du -h "$binary" | cut -f1)"
    echo "$binary"
done
