#!/usr/bin/env bash
# Runs a lean sample of QEMU's own qemu-iotests (scripts/iotests-sample.txt)
# with img standing in for qemu-img, through the shared runner
# (../shared/iotests/run.sh, or $IOTESTS_RUN). It needs QEMU 10.0.2's source
# at /tmp/qemu-src (../shared/iotests/setup-src.sh puts it there); without
# it the sample is skipped. IMG defaults to target/debug/img.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${QEMU_SRC:-/tmp/qemu-src}
if [ ! -f "$SRC/tests/qemu-iotests/check" ]; then
    echo "iotests sample: $SRC missing, skipped (../shared/iotests/setup-src.sh sets it up)"
    exit 0
fi
RUN=${IOTESTS_RUN:-../shared/iotests/run.sh}
if [ ! -f "$RUN" ]; then
    echo "iotests sample: $SRC is there but the runner $RUN is not, skipped" >&2
    exit 0
fi
IMG=$(realpath "${IMG:-target/debug/img}")
IOTESTS_SUBSET="$PWD/scripts/iotests-sample.txt" bash "$RUN" "$IMG"
