#!/bin/sh
# Checks a built guest ELF: static EXEC at >= 2 MiB, no dynamic section,
# small, and no SSE/x87 instruction outside libcore's formatting code (which
# panic paths reference but this guest never runs: its panic handler prints
# only literal text and log statements are compiled out). int3 is not
# checked: libcore pads between functions with 0xcc bytes that never run.
# Usage: check-elf.sh path/to/vmm-test-guest
set -eu
elf=$1
fail() { echo "check-elf: $*" >&2; exit 1; }
readelf -h "$elf" | grep -q 'Type: *EXEC' || fail "not an EXEC ELF"
entry=$(readelf -h "$elf" | awk '/Entry point/ {print $4}')
[ $((entry)) -ge $((0x200000)) ] || fail "entry $entry below 2 MiB"
readelf -l "$elf" | grep -qE 'DYNAMIC|INTERP' && fail "has a dynamic section or interpreter"
size=$(stat -c %s "$elf")
[ "$size" -lt 1048576 ] || fail "file is $size bytes"
bad=$(objdump -d -M intel -C "$elf" | awk -F '\t' '
    /^[0-9a-f]+ <.*>:$/ { fn = $0; allowed = (fn ~ /core::fmt|core::str::count/); next }
    NF >= 3 && ($3 ~ /[xyz]mm[0-9]|^f[a-z0-9]* |^f[a-z0-9]*$|^(fx|x)(save|rstor)|mxcsr|^emms|^(cmpxchg16b|popcnt|crc32|rdtscp|xgetbv|int |lzcnt|tzcnt|andn|blsr|bextr|pdep|pext)/) { if (!allowed) print fn ": " $3 }')
[ -z "$bad" ] || fail "SSE/x87 outside core::fmt:
$bad"
allowed=$(objdump -d -M intel -C "$elf" | grep -cE 'xmm|ymm' || true)
echo "check-elf: ok: EXEC, entry $entry, $size bytes, no dynamic section; $allowed SSE instructions, all in core::fmt (never run)"
