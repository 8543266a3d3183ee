#!/usr/bin/env python3
"""Time to the guest's first serial byte and to its exit: our vmm against
QEMU's microvm (KVM, qboot firmware, PVH entry), booting this guest in
guest.mode=hello. Runs alternate (ours, QEMU) over several pairs; prints
medians and the median ratio. Measured from outside both processes the same
way: spawn, first byte on stdout, process exit.

Usage: bench-first-byte.py VMM_BINARY GUEST_ELF [PAIRS]
"""
import os
import statistics
import subprocess
import sys
import time


def run(argv):
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - start
    rest = proc.stdout.read()
    proc.wait()
    exit_at = time.perf_counter() - start
    output = (first + rest).decode(errors="replace")
    if "guest: hello" not in output:
        sys.exit(f"no 'guest: hello' from {argv[0]}: {output!r}")
    return first_at, exit_at


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    vmm, guest = sys.argv[1], sys.argv[2]
    pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    ours = [vmm, "--kernel", guest, "--cmdline", "guest.mode=hello", "--memory", "128M"]
    qemu = ["qemu-system-x86_64", "-M", "microvm,pit=off,pic=off,rtc=off,ioapic2=off",
            "-accel", "kvm", "-bios", "/usr/share/qemu/qboot.rom", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-m", "128M",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", guest, "-append", "guest.mode=hello"]
    run(ours), run(qemu)  # warm the page cache
    results = {"ours": [], "qemu": []}
    for _ in range(pairs):
        results["ours"].append(run(ours))
        results["qemu"].append(run(qemu))
    for name, runs in results.items():
        first = statistics.median(r[0] for r in runs) * 1000
        total = statistics.median(r[1] for r in runs) * 1000
        print(f"{name}: first serial byte {first:.1f} ms, exit {total:.1f} ms (median of {pairs})")
    ratios_first = [o[0] / q[0] for o, q in zip(results["ours"], results["qemu"])]
    ratios_exit = [o[1] / q[1] for o, q in zip(results["ours"], results["qemu"])]
    print(f"ours/qemu: first byte {statistics.median(ratios_first):.2f}, "
          f"exit {statistics.median(ratios_exit):.2f} (median of per-pair ratios)")


if __name__ == "__main__":
    main()
