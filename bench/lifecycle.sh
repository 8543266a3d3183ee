#!/usr/bin/env bash
# Benchmark the image-lifecycle commands against qemu-img (STYLE.md point 10):
#
#   compress  `img convert -c -O qcow2` against `qemu-img convert -c -W -m 16
#             -O qcow2` of a raw image that is half random bytes, half
#             text-like words (generated once, fixed seed). Targets: wall time
#             ratio <= 0.5 and output size ratio <= 1.02.
#   snapshot  `img snapshot -c` then `-d` against qemu-img's on a fully
#             allocated qcow2 image (64 KiB clusters, random data). Target:
#             each ratio <= 1.0.
#
# A benchmark, not a test: it prints per-pair figures and the median ratios,
# and exits non-zero only when an output is wrong (qemu-img compare or check
# fails), never because a target was missed. Runs alternate which tool goes
# first; every timed run of a writing command starts after `sync` and ends
# with `sync` inside the timing, so page-cache writeback never lands in the
# next run.
#
# Usage: bench/lifecycle.sh [--compress-size 1G] [--snapshot-size 4G]
#                           [--pairs 3] [--img PATH] [--workdir DIR] [--keep]
#                           [--only compress|snapshot]

set -euo pipefail
export LC_ALL=C

compress_size=1G
snapshot_size=4G
pairs=3
img=""
workdir_parent=/var/tmp
keep=0
only=""
while (($#)); do
    case $1 in
        --compress-size) compress_size=$2; shift 2 ;;
        --snapshot-size) snapshot_size=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --img) img=$2; shift 2 ;;
        --workdir) workdir_parent=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --only) only=$2; shift 2 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "lifecycle.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z $img ]]; then
    img=$repo_dir/target/release/img
    (cd "$repo_dir" && cargo build --release -q -p tools)
fi
to_mib() {
    local v=$1
    case $v in
        *G) echo $((${v%G} * 1024)) ;;
        *M) echo "${v%M}" ;;
        *) echo "lifecycle.sh: sizes take M or G: '$v'" >&2; exit 2 ;;
    esac
}
work=$(mktemp -d "$workdir_parent/lifecycle.XXXXXX")
if ((keep)); then echo "keeping $work" >&2; else trap 'rm -rf "$work"' EXIT; fi
cd "$work"

now() { echo "$EPOCHREALTIME"; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# Runs "$@" after sync, with the closing sync inside the timing; prints seconds.
timed() {
    sync
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    sync
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

bench_compress() {
    local mib half
    mib=$(to_mib "$compress_size")
    half=$((mib / 2))
    echo "== convert -c: ${mib} MiB raw, half random, half text-like" >&2
    head -c "$((half << 20))" /dev/urandom >src.raw
    python3 - "$((mib - half))" >>src.raw <<'EOF'
import random, sys
random.seed(7)
syl = ['ka','to','ri','mo','ne','la','su','pe','di','an','or','st','th','ing','ed','er','qu','ve','ly','tion']
words = [''.join(random.choice(syl) for _ in range(random.randint(1, 4))) for _ in range(20000)]
out, n = [], 0
while n < 8 << 20:
    line = ' '.join(random.choice(words) for _ in range(random.randint(5, 15))) + '.\n'
    out.append(line); n += len(line)
text = ''.join(out).encode()[:8 << 20]
mib = int(sys.argv[1])
for i in range(mib // 8):
    sys.stdout.buffer.write(text)
sys.stdout.buffer.write(text[:(mib % 8) << 20])
EOF
    local ratios=() size_ratio=""
    for ((i = 0; i < pairs; i++)); do
        local ours theirs
        if ((i % 2 == 0)); then
            rm -f o.qcow2; ours=$(timed "$img" convert -c -O qcow2 src.raw o.qcow2)
            rm -f q.qcow2; theirs=$(timed qemu-img convert -c -W -m 16 -O qcow2 src.raw q.qcow2)
        else
            rm -f q.qcow2; theirs=$(timed qemu-img convert -c -W -m 16 -O qcow2 src.raw q.qcow2)
            rm -f o.qcow2; ours=$(timed "$img" convert -c -O qcow2 src.raw o.qcow2)
        fi
        local r
        r=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.3f", a / b}')
        ratios+=("$r")
        echo "pair $i: ours ${ours}s qemu-img ${theirs}s ratio $r" >&2
    done
    qemu-img compare -q src.raw o.qcow2 || { echo "compressed output differs" >&2; exit 1; }
    qemu-img check -q o.qcow2 || { echo "compressed output does not check clean" >&2; exit 1; }
    local so sq
    so=$(stat -c %s o.qcow2)
    sq=$(stat -c %s q.qcow2)
    size_ratio=$(awk -v a="$so" -v b="$sq" 'BEGIN {printf "%.4f", a / b}')
    local med
    med=$(printf '%s\n' "${ratios[@]}" | median)
    printf 'convert -c   time ratio (median of %d) %s (target <= 0.5)   size ours %d qemu-img %d ratio %s (target <= 1.02)\n' \
        "$pairs" "$med" "$so" "$sq" "$size_ratio"
}

bench_snapshot() {
    local mib
    mib=$(to_mib "$snapshot_size")
    echo "== snapshot create/delete: ${mib} MiB fully allocated qcow2, 64 KiB clusters" >&2
    head -c "$((mib << 20))" /dev/urandom >snap.raw
    qemu-img convert -O qcow2 -o cluster_size=64k snap.raw base.qcow2
    rm -f snap.raw
    local create_ratios=() delete_ratios=()
    for ((i = 0; i < pairs; i++)); do
        cp base.qcow2 o.qcow2
        cp base.qcow2 q.qcow2
        local oc od qc qd
        if ((i % 2 == 0)); then
            oc=$(timed "$img" snapshot -c s o.qcow2); qc=$(timed qemu-img snapshot -c s q.qcow2)
            od=$(timed "$img" snapshot -d s o.qcow2); qd=$(timed qemu-img snapshot -d s q.qcow2)
        else
            qc=$(timed qemu-img snapshot -c s q.qcow2); oc=$(timed "$img" snapshot -c s o.qcow2)
            qd=$(timed qemu-img snapshot -d s q.qcow2); od=$(timed "$img" snapshot -d s o.qcow2)
        fi
        create_ratios+=("$(awk -v a="$oc" -v b="$qc" 'BEGIN {printf "%.3f", a / b}')")
        delete_ratios+=("$(awk -v a="$od" -v b="$qd" 'BEGIN {printf "%.3f", a / b}')")
        echo "pair $i: create ours ${oc}s qemu-img ${qc}s; delete ours ${od}s qemu-img ${qd}s" >&2
        qemu-img check -q o.qcow2 || { echo "snapshot image does not check clean" >&2; exit 1; }
    done
    printf 'snapshot -c  time ratio (median of %d) %s (target <= 1.0)\n' "$pairs" \
        "$(printf '%s\n' "${create_ratios[@]}" | median)"
    printf 'snapshot -d  time ratio (median of %d) %s (target <= 1.0)\n' "$pairs" \
        "$(printf '%s\n' "${delete_ratios[@]}" | median)"
}

[[ -z $only || $only == compress ]] && bench_compress
[[ -z $only || $only == snapshot ]] && bench_snapshot
exit 0
