#!/usr/bin/env bash
# Runs the test suite: unit tests, model-based property tests, and the
# integration tests that hold img and the qcow library against qemu-img.
# REQUIRE_QEMU makes the cross-checks fail, not skip, if qemu-img is
# missing. Longer runs: QCOW_MODEL_OPS=100000 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-qemu.sh
bash scripts/ensure-qemu-system.sh
bash scripts/ensure-libvirt.sh
bash scripts/ensure-curl.sh
bash scripts/ensure-net.sh
bash scripts/ensure-xorriso.sh
bash scripts/ensure-iasl.sh
export REQUIRE_QEMU=1
export REQUIRE_LIBVIRT=1
export REQUIRE_KVM=1
export REQUIRE_XORRISO=1
export REQUIRE_IASL=1
# The integration tests run the img binary; cargo test alone does not
# build binaries of packages without integration tests of their own.
# vm's tests start the vmm found next to vm.
cargo build -p tools -p vmm
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# A sample of QEMU's qemu-iotests with img as qemu-img (only where
# /tmp/qemu-src exists; see README).
bash scripts/iotests-sample.sh
# One closing line over every cargo test binary (the iotests sample has its own).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
