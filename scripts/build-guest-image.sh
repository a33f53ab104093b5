#!/usr/bin/env bash
# Builds the guest image of a nested cluster: the service VM of scripts/build-vm-image.sh with a
# static nines binary inside, which starts `nines agent` at boot and joins the cluster as the
# node the VM's host appended to its initrd (see examples/vm-nested.yaml).
#
#   scripts/build-guest-image.sh [OUT_DIR]      (default: target/tmp/nines-guest-image)
#
# The binary is built with glibc linked statically (the guest has no libc) and without the
# default features (no libvirt inside guests), in its own target directory (target/guest), so
# it never invalidates the normal build. Both steps are incremental: a second run with nothing
# changed takes seconds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-target/tmp/nines-guest-image}
TARGET=x86_64-unknown-linux-gnu

echo "build-guest-image: building a static nines for the guest (target/guest; minutes the first time)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p nines \
    --no-default-features --target "$TARGET" --target-dir target/guest
BIN=target/guest/$TARGET/release/nines
if ldd "$BIN" 2>&1 | grep -q "=>"; then
    echo "build-guest-image: error: $BIN is dynamically linked; the guest has no libc" >&2
    exit 1
fi
NINES_AGENT_BIN=$BIN scripts/build-vm-image.sh "$OUT"
