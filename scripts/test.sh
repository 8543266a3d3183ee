#!/usr/bin/env bash
# Runs the test suite: unit tests, model-based property tests, and the
# integration tests that hold img and the qcow library against qemu-img.
# REQUIRE_QEMU makes the cross-checks fail, not skip, if qemu-img is
# missing. Longer runs: QCOW_MODEL_OPS=100000 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-qemu.sh
export REQUIRE_QEMU=1
export REQUIRE_KVM=1
# The integration tests run the img binary; cargo test alone does not
# build binaries of packages without integration tests of their own.
cargo build -p tools
cargo test --workspace
# A sample of QEMU's qemu-iotests with img as qemu-img (only where
# /tmp/qemu-src exists; see README).
bash scripts/iotests-sample.sh
