#!/usr/bin/env bash
# Benchmark `img bench` against `qemu-img bench -i io_uring` (STYLE.md
# point 10): 4 KiB requests, sequential (step = request size, qemu-img's
# default), reads and writes, depth 1 and 32, cache=none and writeback, on a
# fully allocated qcow2 image (64 KiB clusters) and on a raw file holding
# the same bytes.
#
# This is a benchmark, not a test: it prints a table and says whether the
# targets hold, but exits non-zero only when a run fails or an image is
# left damaged (qemu-img check), never because a target was missed.
#
# Usage: bench/block.sh [--size 1G] [--pairs 5] [--count 100000]
#                       [--count1 10000] [--img PATH] [--workdir DIR] [--keep]
#
# Inputs (made once per run in a fresh temp dir under --workdir, which must
# not be tmpfs: cache=none needs O_DIRECT):
#   d.raw    SIZE random bytes (every block allocated).
#   d.qcow2  qemu-img convert -O qcow2 -o cluster_size=64k of d.raw: every
#            cluster allocated with data.
#
# Cells: format (qcow2, raw) x cache (none, writeback) x read/write x depth
# (1, 32). Both tools run with the same flags:
#   IMG      bench -f FMT -t CACHE -d DEPTH -c COUNT -s 4k [-w] FILE
#   qemu-img bench -f FMT -t CACHE -d DEPTH -c COUNT -s 4k [-w] -i io_uring FILE
# COUNT is --count at depth 32 and --count1 at depth 1; cache=writeback
# reads (served from the page cache, they would otherwise finish within a
# few timer ticks) get ten times --count at depth 32 and five times --count1
# at depth 1 (qemu-img 10.0 bench overflows its stack, by recursing through
# inline completions, somewhere between 70000 and 100000 such requests);
# cache=writeback writes at depth 1 get five times --count1 too (ours took
# 40-50 ms for 10000, so the 1 ms timer alone moved a ratio by 2%).
#
# Method, per cache/op/depth: one untimed warm-up run of each tool on each
# format, then PAIRS rounds; each round measures ours and qemu-img on the
# qcow2 image and on the raw file, back to back (the virtual disk's speed
# drifts over minutes, so the figures compared come from the same moment).
# The format order and the tool order alternate from round to round. Every
# run is followed by `sync` (outside the timing, which is the tool's own
# "Run completed in" figure) so that one run's page-cache writeback does
# not land in the next. IOPS = COUNT / seconds.
#
# Reported per cell: median IOPS of ours and of qemu-img, the median of the
# per-round ratios ours/qemu-img (target >= 1.2), and for qcow2 the median
# of the per-round ratios of our qcow2 IOPS to our raw IOPS (target >= 0.9).
#
# Check the script with qemu-img against itself (ratios near 1.0):
#   bench/block.sh --img "$(command -v qemu-img)" --size 256M --pairs 2

set -euo pipefail
export LC_ALL=C

readonly RATIO_TARGET=1.2
readonly QCOW2_RAW_TARGET=0.9

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$script_dir")

usage() {
    cat <<EOF
Usage: bench/block.sh [--size 1G] [--pairs 5] [--count 100000]
                      [--count1 10000] [--img PATH] [--workdir DIR] [--keep]
                      [--only 'CACHE OP DEPTH']

  --size N      image size (K/M/G suffixes, binary), default 1G
  --pairs N     ours/qemu-img pairs per cell, default 5
  --count N     requests per run at depth 32, default 100000
  --count1 N    requests per run at depth 1, default 10000
  --img PATH    our binary, default \$CARGO_TARGET_DIR or target/release/img
                (built with 'cargo build --release -p tools' if missing)
  --workdir DIR parent of the temp dir holding the images, default /var/tmp
  --keep        keep the temp dir
  --only GROUP  run only the cells of one group, e.g. 'none write 1'
EOF
}

die() {
    echo "block.sh: $*" >&2
    exit 2
}

log() { echo "$*" >&2; }

to_bytes() {
    local value=$1 number unit
    [[ $value =~ ^([0-9]+)([kKmMgG]?)$ ]] || die "not a size: '$value' (e.g. 1G, 256M)"
    number=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[2]}
    case $unit in
        k | K) echo $((number << 10)) ;;
        m | M) echo $((number << 20)) ;;
        g | G) echo $((number << 30)) ;;
        *) echo "$number" ;;
    esac
}

median() { # numbers on stdin, one per line
    sort -g | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) printf "%.6f\n", v[(NR + 1) / 2]
            else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# ---------------------------------------------------------------- arguments
size_arg=1G
pairs=5
count=100000
count1=10000
img=""
workdir_parent=/var/tmp
keep=0
only=""
while (($#)); do
    case $1 in
        --size) size_arg=${2:?}; shift 2 ;;
        --pairs) pairs=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --count1) count1=${2:?}; shift 2 ;;
        --img) img=${2:?}; shift 2 ;;
        --workdir) workdir_parent=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --only) only=${2:?}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
size=$(to_bytes "$size_arg")
((size >= 1 << 20)) || die "--size must be at least 1M"
for n in "$pairs" "$count" "$count1"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: '$n'"
done

command -v qemu-img >/dev/null || die "qemu-img is missing (apt-get install qemu-utils)"
if [[ -z $img ]]; then
    img=${CARGO_TARGET_DIR:-$repo_dir/target}/release/img
    if [[ ! -x $img ]]; then
        log "building $img (cargo build --release -p tools)"
        (cd "$repo_dir" && cargo build --release -p tools) >&2 || die "build failed"
    fi
fi
[[ -x $img ]] || die "--img '$img' is not an executable file"

# ---------------------------------------------------------------- images
[[ -d $workdir_parent ]] || die "--workdir '$workdir_parent' is not a directory"
work=$(mktemp -d "$workdir_parent/img-bench-block.XXXXXX")
cleanup() {
    if ((keep)); then log "kept $work"; else rm -rf -- "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "making $size_arg of random data and its qcow2 copy in $work"
head -c "$size" /dev/urandom >"$work/d.raw"
qemu-img convert -f raw -O qcow2 -o cluster_size=64k "$work/d.raw" "$work/d.qcow2"
sync
# Drop both files from the page cache (fadvise DONTNEED), so that they start
# from the same state: left as the writers made them, the qcow2 copy's pages
# (written by qemu-img in large pieces, so in large folios) made every 4 KiB
# page-cache write into it far slower than into the raw file's, whatever the
# tool (our qcow2/raw at writeback depth 1 read 0.70 that way, 0.9 after).
for f in "$work/d.raw" "$work/d.qcow2"; do
    dd if="$f" iflag=nocache count=0 status=none
done

# ---------------------------------------------------------------- runs
# Prints the seconds of one run (the tool's own figure), then syncs.
run_one() { # tool fmt cache depth count rw
    local tool=$1 fmt=$2 cache=$3 depth=$4 n=$5 rw=$6 out extra=()
    [[ $rw == write ]] && extra+=(-w)
    [[ $tool == theirs ]] && extra+=(-i io_uring)
    local bin=$img
    [[ $tool == theirs ]] && bin=qemu-img
    if ! out=$("$bin" bench -f "$fmt" -t "$cache" -d "$depth" -c "$n" -s 4k \
        "${extra[@]}" "$work/d.$fmt" 2>&1); then
        echo "block.sh: $tool failed: $out" >&2
        exit 1
    fi
    sync
    sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$out"
}

iops() { # count seconds -> IOPS; a run under the timer's 1 ms counts as 1 ms
    awk -v n="$1" -v s="$2" 'BEGIN { if (s < 0.001) s = 0.001; printf "%.1f", n / s }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }

declare -A med_ours med_theirs med_ratio med_qr
cells=()
for cache in none writeback; do
    for rw in read write; do
        for depth in 1 32; do
            n=$count
            ((depth == 1)) && n=$count1
            if [[ $cache == writeback && $rw == read ]]; then
                n=$((depth == 1 ? n * 5 : n * 10))
            elif [[ $cache == writeback && $depth == 1 ]]; then
                n=$((n * 5))
            fi
            group="$cache $rw $depth"
            [[ -z $only || $only == "$group" ]] || continue
            log "cells: $group ($n requests, $pairs pairs)"
            for fmt in qcow2 raw; do
                run_one ours "$fmt" "$cache" "$depth" "$n" "$rw" >/dev/null
                run_one theirs "$fmt" "$cache" "$depth" "$n" "$rw" >/dev/null
            done
            declare -A o=() t=() r=()
            qr=()
            for ((i = 0; i < pairs; i++)); do
                # Rotate who goes first, and which format, pair by pair.
                if ((i % 2 == 0)); then fmts=(qcow2 raw); else fmts=(raw qcow2); fi
                declare -A got=()
                for fmt in "${fmts[@]}"; do
                    if (((i / 2) % 2 == 0)); then order=(ours theirs); else order=(theirs ours); fi
                    for tool in "${order[@]}"; do
                        got[$tool $fmt]=$(iops "$n" "$(run_one "$tool" "$fmt" "$cache" "$depth" "$n" "$rw")")
                    done
                    o[$fmt]+="${got[ours $fmt]} "
                    t[$fmt]+="${got[theirs $fmt]} "
                    r[$fmt]+="$(ratio "${got[ours $fmt]}" "${got[theirs $fmt]}") "
                    log "  pair $i $fmt: ours ${got[ours $fmt]} IOPS, qemu-img ${got[theirs $fmt]} IOPS"
                done
                qr+=("$(ratio "${got[ours qcow2]}" "${got[ours raw]}")")
            done
            for fmt in qcow2 raw; do
                key="$fmt $group"
                cells+=("$key")
                med_ours[$key]=$(tr ' ' '\n' <<<"${o[$fmt]}" | grep . | median)
                med_theirs[$key]=$(tr ' ' '\n' <<<"${t[$fmt]}" | grep . | median)
                med_ratio[$key]=$(tr ' ' '\n' <<<"${r[$fmt]}" | grep . | median)
            done
            med_qr["qcow2 $group"]=$(printf '%s\n' "${qr[@]}" | median)
        done
    done
done

qemu-img check -q "$work/d.qcow2" || die "qemu-img check found errors after the runs"

# ---------------------------------------------------------------- report
echo
echo "img bench vs qemu-img bench -i io_uring: 4 KiB sequential, size $size_arg, $pairs pairs"
printf '%-6s %-9s %-5s %5s %12s %12s %11s %12s\n' \
    format cache op depth "ours IOPS" "qemu IOPS" "ours/qemu" "qcow2/raw"
missed=0
for key in "${cells[@]}"; do
    read -r fmt cache rw depth <<<"$key"
    ratio=${med_ratio[$key]}
    mark=""
    awk -v r="$ratio" -v t="$RATIO_TARGET" 'BEGIN { exit !(r >= t) }' || { mark="*"; missed=1; }
    qr="-"
    if [[ $fmt == qcow2 ]]; then
        qr=$(printf '%.2f' "${med_qr[$key]}")
        awk -v r="$qr" -v t="$QCOW2_RAW_TARGET" 'BEGIN { exit !(r >= t) }' || { qr="$qr*"; missed=1; }
    fi
    printf '%-6s %-9s %-5s %5s %12.0f %12.0f %10.2f%1s %12s\n' \
        "$fmt" "$cache" "$rw" "$depth" "${med_ours[$key]}" "${med_theirs[$key]}" "$ratio" "$mark" "$qr"
done
echo
echo "targets: ours/qemu >= $RATIO_TARGET in every cell, our qcow2/raw >= $QCOW2_RAW_TARGET; '*' marks a miss"
if ((missed)); then echo "some targets missed"; else echo "all targets met"; fi
