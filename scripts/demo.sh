#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job on a default example:
# installs what is missing (qemu-utils for the cross-checks), builds `img`
# in release mode, then creates a qcow2 over a backing file, converts a
# generated file into a qcow2, and shows `img info`, `img check`, `img map`
# and `img compare` next to qemu-img's verdict.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-qemu.sh

echo "== building img (release)"
cargo build --release -q -p tools
IMG=$PWD/target/release/img

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/img-demo.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "== a 64 MiB raw base with random and text-like data"
python3 - <<'PY'
import os
with open("base.raw", "wb") as f:
    f.truncate(64 << 20)
    for i in range(0, 64, 4):
        f.seek(i << 20)
        f.write(os.urandom(1 << 20))
        f.write((b"the quick brown fox jumps over the lazy dog\n" * 23831)[: 1 << 20])
PY

echo "== img create -f qcow2 -b base.raw -F raw overlay.qcow2"
"$IMG" create -f qcow2 -b base.raw -F raw overlay.qcow2
echo "== img convert -O qcow2 base.raw copy.qcow2"
"$IMG" convert -p -O qcow2 base.raw copy.qcow2
echo
echo "== img info copy.qcow2"
"$IMG" info copy.qcow2
echo "== img info --backing-chain overlay.qcow2"
"$IMG" info --backing-chain overlay.qcow2
echo "== img check copy.qcow2"
"$IMG" check copy.qcow2
echo "== img map copy.qcow2 (first lines)"
"$IMG" map copy.qcow2 | head -5
echo "== img compare base.raw copy.qcow2; img compare base.raw overlay.qcow2"
"$IMG" compare base.raw copy.qcow2
"$IMG" compare base.raw overlay.qcow2
echo "== qemu-img check on our output"
qemu-img check copy.qcow2
qemu-img check overlay.qcow2
