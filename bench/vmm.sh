#!/usr/bin/env bash
# Benchmark the VMM's start-up with the tiny test guest (not a test):
# time from process start to the guest's first serial byte and to the
# VMM's exit, and the VMM's peak RSS, for `vmm` and, when it is installed,
# `qemu-system-x86_64 -M microvm -enable-kvm` booting the same guest (its
# PVH entry). Prints medians over --runs runs and the ratios ours/QEMU.
#
# qemu-system-x86 10 comes from bookworm-backports: with --install-qemu the
# script adds that suite to apt's sources (if absent) and installs it from
# there (the main suite's 7.2 would replace qemu-utils 10).
#
# Usage: bench/vmm.sh [--runs 10] [--memory 128M] [--install-qemu]

set -euo pipefail
runs=10
memory=128M
install_qemu=0
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --install-qemu) install_qemu=1; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "vmm.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build -q --release -p vmm
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
vmm=$target/release/vmm

if ((install_qemu)) && ! command -v qemu-system-x86_64 >/dev/null; then
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" \
            >/etc/apt/sources.list.d/bookworm-backports.list
        apt-get update -q
    fi
    apt-get install -y -q -t bookworm-backports qemu-system-x86
fi

# Runs a command N times (after one untimed run); prints median first-byte
# ms, exit ms and peak RSS KiB. RSS comes from GNU time around the command,
# not from this Python parent (a forked child inherits the parent's
# high-water mark until exec).
measure() {
    python3 - "$runs" "$@" <<'EOF'
import os, statistics, subprocess, sys, tempfile, time
runs = int(sys.argv[1]); cmd = sys.argv[2:]
firsts, exits, rss = [], [], []
report = tempfile.NamedTemporaryFile(delete=False).name
subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
for _ in range(runs):
    t0 = time.monotonic()
    p = subprocess.Popen(['/usr/bin/time', '-f', '%M', '-o', report] + cmd,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = None
    fd = p.stdout.fileno()
    while True:
        b = os.read(fd, 4096)
        if b and first is None:
            first = time.monotonic() - t0
        if not b:
            break
    p.wait()
    exits.append((time.monotonic() - t0) * 1e3)
    firsts.append((first or float('nan')) * 1e3)
    rss.append(int(open(report).read().split()[-1]))
print('%.1f %.1f %d' % (statistics.median(firsts), statistics.median(exits), statistics.median(rss)))
EOF
}

read -r ours_first ours_exit ours_rss < <(measure "$vmm" --kernel "$guest" --memory "$memory" \
    --cmdline "guest.mode=hello")
for _ in 1 2 3; do
    "$vmm" --kernel "$guest" --memory "$memory" --cmdline guest.mode=hello --timings \
        </dev/null 2>&1 >/dev/null | grep -F 'vmm: setup'
done
printf 'vmm:        first serial byte %6.1f ms   exit %6.1f ms   peak RSS %6d KiB\n' \
    "$ours_first" "$ours_exit" "$ours_rss"
if command -v qemu-system-x86_64 >/dev/null; then
    read -r q_first q_exit q_rss < <(measure qemu-system-x86_64 \
        -M microvm,pit=off,pic=off,rtc=off,ioapic2=off -accel kvm \
        -bios /usr/share/qemu/qboot.rom \
        -nodefaults -no-user-config -nographic -serial stdio -m "$memory" -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" -append "guest.mode=hello")
    printf 'qemu microvm: first serial byte %6.1f ms   exit %6.1f ms   peak RSS %6d KiB\n' \
        "$q_first" "$q_exit" "$q_rss"
    awk -v a="$ours_first" -v b="$q_first" -v c="$ours_exit" -v d="$q_exit" -v e="$ours_rss" -v f="$q_rss" \
        'BEGIN { printf "ratios ours/qemu: first byte %.2f, exit %.2f, peak RSS %.2f\n", a/b, c/d, e/f }'
else
    echo "qemu-system-x86_64 not installed (--install-qemu installs it from bookworm-backports)"
fi
echo "targets: first byte < 20 ms of host time outside the guest; VMM RSS overhead < 10 MiB"
