#!/usr/bin/env bash
# The product's day on a fresh machine: installs what is missing
# (qemu-utils for the cross-checks), builds `img`, `vm`, `vmm` (release)
# and the tiny test guest, then
#  - with img: creates a qcow2 over a backing file, converts a generated
#    file into a qcow2, and shows `img info`, `img check`, `img map` and
#    `img compare` next to qemu-img's verdict;
#  - with vm: makes the guest's disk with `img create`, defines a domain
#    (libvirt domain XML), starts it, lists it, shows its statistics
#    (`vm domstats`, the guest's reads, writes and flushes included),
#    suspends and resumes it, shuts it down (ACPI power button) and lists
#    again, then checks the disk with `img check`.
# Needs /dev/kvm for the vm part (skipped with a note without it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/ensure-qemu.sh

echo "== building img, vm and vmm (release)"
cargo build --release -q -p tools -p vmm
IMG=$ROOT/target/release/img
VM=$ROOT/target/release/vm

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/img-demo.XXXXXX")
STORE=$WORK/store
cleanup() {
    # Whatever still runs from this demo goes with it.
    if [ -x "$VM" ] && [ -d "$STORE" ]; then
        "$VM" -c "$STORE" -q destroy demo >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
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
# head closes the pipe early: img then ends as SIGPIPE ends it (141), as
# qemu-img does; that is not a failure here.
{ "$IMG" map copy.qcow2 || [ $? -eq 141 ]; } | head -5
echo "== img compare base.raw copy.qcow2; img compare base.raw overlay.qcow2"
"$IMG" compare base.raw copy.qcow2
"$IMG" compare base.raw overlay.qcow2
echo "== qemu-img check on our output"
qemu-img check copy.qcow2
qemu-img check overlay.qcow2

if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
    echo "== no usable /dev/kvm: the vm part of the demo is skipped"
    exit 0
fi

echo "== building the test guest (vmm/guest)"
(
    cd "$ROOT/vmm/guest"
    CARGO_ENCODED_RUSTFLAGS=$(printf -- '-Crelocation-model=static\x1f-Cno-redzone=yes\x1f-Ctarget-feature=-sse,-sse2,-x87') \
        RUSTFLAGS= cargo build --release -q --target x86_64-unknown-linux-gnu \
        --target-dir "$ROOT/target/guest" 2>/dev/null
)
GUEST=$ROOT/target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest

echo "== img create -f qcow2 demo.qcow2 64M"
"$IMG" create -f qcow2 demo.qcow2 64M
cat >demo.xml <<XML
<domain type='kvm'>
  <name>demo</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$GUEST</kernel>
    <cmdline>guest.mode=io guest.reads=16 guest.writes=8 guest.flushes=2</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$WORK/demo.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <target port='0'/>
    </serial>
  </devices>
</domain>
XML
echo "== vm define demo.xml"
"$VM" -c "$STORE" define demo.xml
echo "== vm start demo"
"$VM" -c "$STORE" start demo
echo "== vm list --all"
"$VM" -c "$STORE" list --all
# The guest prints "io done" after its I/O, then "guest: idle" once it
# listens for the power button.
for _ in $(seq 200); do
    grep -q "guest: idle" "$STORE/run/demo/console.log" 2>/dev/null && break
    sleep 0.05
done
echo "== vm domstats demo (the guest made 16 reads, 8 writes and 2 flushes)"
"$VM" -c "$STORE" domstats demo
echo "== vm suspend demo; vm domstate demo --reason; vm resume demo"
"$VM" -c "$STORE" suspend demo
"$VM" -c "$STORE" domstate demo --reason
"$VM" -c "$STORE" resume demo
echo "== vm shutdown demo"
"$VM" -c "$STORE" shutdown demo
for _ in $(seq 200); do
    [ "$("$VM" -c "$STORE" -q domstate demo)" = "shut off" ] && break
    sleep 0.05
done
echo "== vm list --all"
"$VM" -c "$STORE" list --all
echo "== vm domstate demo --reason"
"$VM" -c "$STORE" domstate demo --reason
echo "== img check demo.qcow2"
"$IMG" check demo.qcow2
