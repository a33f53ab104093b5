#!/usr/bin/env bash
# The project's one test command: what the README tells you to run and what CI runs
# (.ci/run installs the tools, then execs this). Runs from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() {
    printf '\n==> %s\n' "$*"
}

stage "format (cargo fmt --check)"
cargo fmt --all --check

# The libvirt driver is an opt-in feature of the nines binary: lint with and without it, and
# test with it, so that its code and tests (crates/agent/tests/vm_libvirt.rs) run too.
stage "lint (clippy, warnings are errors, with the libvirt feature)"
cargo clippy --workspace --all-targets --features nines/libvirt -- -D warnings
cargo clippy -p nines-agent -p nines --all-targets -- -D warnings

stage "guest image (scripts/build-guest-image.sh: a static nines inside the service VM)"
scripts/build-guest-image.sh target/tmp/nines-guest-image

stage "tests (cargo test --workspace --features nines/libvirt)"
cargo test --workspace --features nines/libvirt

stage "tests of the build without libvirt (a driver: libvirt VM says why it cannot run)"
cargo test -p nines-agent --test vm_no_libvirt

stage "validate the examples"
cargo run --release -p nines -- validate examples/*.yaml

stage "simulate (10,000 seeded runs)"
cargo run --release -p nines -- sim --runs 10000 --seed 1

stage "simulate the nested cluster (2,000 seeded runs of examples/vm-nested.yaml)"
cargo run --release -p nines -- sim --runs 2000 --seed 1 --config examples/vm-nested.yaml

stage "all checks passed"
