#!/usr/bin/env bash
# Benchmark of forks (not a test): `vm clone --from-snapshot` of a running
# domain (the test guest, guest.mode=count guest.fill=256: 512 MiB of RAM
# of which 256 MiB hold data, counting on its serial port) from one full
# snapshot, against `vm snapshot-revert --running` of the same domain to
# the same snapshot, in place and of the domain shut off first (which
# starts a new VMM, as a fork does), runs alternating. Prints per run and
# as medians the command's time and the time from the command to the new
# guest's first serial line (the guest prints a line every 1000 steps,
# which bounds the resolution), and the ratios fork/revert of the medians.
# Each fork is destroyed and its files removed (then `sync`) before the
# next run. No QEMU figure: QEMU has no fork.
#
# Usage: bench/fork.sh [--runs 5] [--memory 512] [--fill 256]

set -euo pipefail
runs=5
memory=512
fill=256
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --fill) fill=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "fork.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build -q --release -p vmm -p tools
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
bin=$target/release
work=$(mktemp -d "${TMPDIR:-/var/tmp}/fork-bench.XXXXXX")
store=$work/store
cleanup() {
    for name in bench fork; do
        "$bin/vm" -c "$store" destroy "$name" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/img" create -q -f qcow2 "$work/bench.qcow2" 64M
cat >"$work/bench.xml" <<EOF
<domain type='kvm'>
  <name>bench</name>
  <memory unit='MiB'>$memory</memory>
  <os>
    <type>hvm</type>
    <kernel>$guest</kernel>
    <cmdline>guest.mode=count guest.every=1000 guest.fill=$fill</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/bench.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
  </devices>
</domain>
EOF
"$bin/vm" -q -c "$store" define "$work/bench.xml"
"$bin/vm" -q -c "$store" start bench

python3 - "$runs" "$bin/vm" "$store" "$work" "$fill" <<'EOF'
import os, statistics, subprocess, sys, time

runs, vm, store, work, fill = sys.argv[1:]
runs = int(runs)

def run(*args):
    subprocess.run([vm, "-q", "-c", store, *args], check=True,
                   stdout=subprocess.DEVNULL)

def log(name):
    return os.path.join(store, "run", name, "console.log")

def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0

def wait_line(path, start, timeout):
    """Seconds until `path` grows past `start` by a whole line."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                if b"\n" in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.0005)
    sys.exit(f"fork.sh: no new line in {path} within {timeout} s")

t0 = time.monotonic()
while b"guest: filled" not in open(log("bench"), "rb").read():
    if time.monotonic() - t0 > 60 + 2 * int(fill):
        sys.exit("fork.sh: the guest did not fill its memory")
    time.sleep(0.1)
run("snapshot-create-as", "bench", "base")

rows = []
for i in range(runs):
    # A fork.
    start = time.monotonic()
    run("clone", "--original", "bench", "--name", "fork", "--from-snapshot",
        "base", "--file", os.path.join(work, "fork.qcow2"), "--running")
    fork_cmd = time.monotonic() - start
    wait_line(log("fork"), 0, 60)
    fork_first = time.monotonic() - start
    run("destroy", "fork")
    run("undefine", "fork")
    for path in ("fork.qcow2", "fork-base.qcow2", log("fork")):
        os.remove(os.path.join(work, path))
    subprocess.run(["sync"], check=True)
    # A revert of the original to the same snapshot.
    before = size(log("bench"))
    start = time.monotonic()
    run("snapshot-revert", "bench", "base", "--running")
    revert_cmd = time.monotonic() - start
    wait_line(log("bench"), before, 60)
    revert_first = time.monotonic() - start
    subprocess.run(["sync"], check=True)
    # The same revert of the original shut off: a new VMM, as a fork's.
    run("destroy", "bench")
    os.remove(log("bench"))
    start = time.monotonic()
    run("snapshot-revert", "bench", "base", "--running")
    wait_line(log("bench"), 0, 60)
    cold_first = time.monotonic() - start
    subprocess.run(["sync"], check=True)
    rows.append((fork_cmd, fork_first, revert_cmd, revert_first, cold_first))
    print(f"run {i + 1}: fork {fork_cmd * 1000:.0f} ms (first line {fork_first * 1000:.0f} ms), "
          f"revert {revert_cmd * 1000:.0f} ms (first line {revert_first * 1000:.0f} ms), "
          f"revert of the shut-off original to its first line {cold_first * 1000:.0f} ms")

med = [statistics.median(col) for col in zip(*rows)]
print(f"median: fork {med[0] * 1000:.0f} ms, command to the fork's first line "
      f"{med[1] * 1000:.0f} ms; revert {med[2] * 1000:.0f} ms, first line {med[3] * 1000:.0f} ms; "
      f"revert of the shut-off original, first line {med[4] * 1000:.0f} ms")
print(f"ratio fork/revert in place (command to first line): {med[1] / med[3]:.2f}")
print(f"ratio fork/revert of the shut-off original: {med[1] / med[4]:.2f}")
EOF
