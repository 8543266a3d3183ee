#!/usr/bin/env bash
# Benchmark `img convert` against `qemu-img convert` (STYLE.md point 10).
#
# This is a benchmark, not a test: it prints ratios against qemu-img measured
# in the same run and says whether our targets hold, but it exits non-zero
# only when an output is *wrong* (qemu-img compare / qemu-img check fail, or a
# convert exits non-zero), never because a target was missed.
#
# Usage: bench/convert.sh [--size 2G] [--pairs 5] [--img PATH] [--workdir DIR]
#                         [--sparse-size 20G] [--sparse-pairs 3]
#                         [--img-opts "OPTS"] [--keep]
#
# Inputs (generated once per run in a fresh temp dir under --workdir):
#   dense.raw    SIZE bytes, a sequence of (random chunk, zero chunk) pairs;
#                within a pair both chunks have the same length, drawn from
#                64 KiB, 128 KiB, ..., 1 MiB (multiples of 64 KiB, fixed seed),
#                so the image is exactly half random and half zero, spread over
#                the whole disk. Zero chunks are written as real zero bytes
#                (allocated, not holes), so the converter has to find them.
#   dense.qcow2  qemu-img convert -O qcow2 of dense.raw (64 KiB clusters).
#   sparse.raw   SPARSE_SIZE bytes, mostly holes: 64 MiB of random data (less
#                if SPARSE_SIZE < 1 GiB) in 256 KiB extents, one at a random
#                4 KiB-aligned offset in each of equal-sized regions.
#   sparse.qcow2 qemu-img convert -O qcow2 of sparse.raw.
#
# Directions: dense raw->qcow2, qcow2->raw, qcow2->qcow2 (PAIRS pairs each);
#             sparse raw->qcow2, qcow2->qcow2 (SPARSE_PAIRS pairs each).
#   ours   = IMG convert [IMG_OPTS] -O FMT SRC DST
#   theirs = qemu-img convert -W -m 16 -O FMT SRC DST   (its fastest settings)
#
# Method, per direction:
#   1. Correctness, once: run ours (untimed), then `qemu-img compare` SRC DST
#      must say identical, virtual sizes must match, and `qemu-img check` must
#      be clean on a qcow2 output.
#   2. PAIRS pairs; pair i runs ours then theirs for even i, theirs then ours
#      for odd i, so neither side always goes first. Each measurement is:
#        rm DST; untimed run; rm DST; sync;     (warm caches, flush writeback)
#        rm DST; [timed: run; sync]             (sync is inside the timing)
#      so one run's page-cache writeback never lands in the next.
#   Wall time: bash $EPOCHREALTIME around the command and the sync.
#   Peak RSS: GNU /usr/bin/time %M on the convert process itself. (Not Python
#   getrusage: exec keeps the parent's RSS high-water mark, which puts a
#   10-14 MiB floor under every child of a Python wrapper; /usr/bin/time's
#   floor is about 1 MiB.)
#
# Reported per direction: median seconds of ours and theirs, the median of the
# per-pair ratios ours/theirs, max peak RSS over the timed runs of each side,
# and the targets: time ratio <= 0.8; our RSS <= qemu-img's or <= 16 MiB.
#
# Until `img` works, check the script with qemu-img against itself, e.g.
#   bench/convert.sh --img "$(command -v qemu-img)" --img-opts "-W -m 16" \
#       --size 256M --pairs 2 --sparse-size 2G --sparse-pairs 2
# (ratios should come out near 1.0).

set -euo pipefail
export LC_ALL=C # $EPOCHREALTIME and printf must use '.' as decimal point

readonly TIME_RATIO_TARGET=0.8
readonly RSS_FLOOR_KIB=$((16 * 1024))
readonly CHUNK_UNIT=$((64 * 1024))
readonly CHUNK_UNITS_MAX=16 # chunks are 64 KiB .. 1 MiB
readonly SPARSE_DATA_MAX=$((64 * 1024 * 1024))
readonly SPARSE_EXTENT=$((256 * 1024))

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$script_dir")

usage() {
    cat <<EOF
Usage: bench/convert.sh [--size 2G] [--pairs 5] [--img PATH] [--workdir DIR]
                        [--sparse-size 20G] [--sparse-pairs 3]
                        [--img-opts "OPTS"] [--keep]

  --size N          dense image size (K/M/G/T suffixes, binary), default 2G
  --pairs N         ours/theirs pairs per dense direction, default 5
  --img PATH        our binary, default target/release/img
                    (built with 'cargo build --release -p tools' if missing)
  --workdir DIR     parent of the temp dir holding all images, default /var/tmp;
                    must not be tmpfs; the temp dir is removed at the end
  --sparse-size N   sparse image size, default 20G; 0 skips the sparse case
  --sparse-pairs N  pairs per sparse direction, default 3
  --img-opts "OPTS" extra options for ours, after 'convert' (e.g. "-W -m 16"
                    when --img is qemu-img, to benchmark qemu-img against itself)
  --keep            keep the temp dir
EOF
}

die() {
    echo "convert.sh: $*" >&2
    exit 2
}

log() { echo "$*" >&2; }

# Byte count from "2G", "256M", "512K", "1T", "4096" (binary units).
to_bytes() {
    local value=$1 number unit
    if [[ ! $value =~ ^([0-9]+)([kKmMgGtT]?)(i?[bB])?$ ]]; then
        die "not a size: '$value' (e.g. 2G, 256M)"
    fi
    number=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[2]}
    case $unit in
        k | K) echo $((number << 10)) ;;
        m | M) echo $((number << 20)) ;;
        g | G) echo $((number << 30)) ;;
        t | T) echo $((number << 40)) ;;
        *) echo "$number" ;;
    esac
}

human() { # bytes -> e.g. "2.0 GiB"
    awk -v b="$1" 'BEGIN {
        split("B KiB MiB GiB TiB", u, " "); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'
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
size_arg=2G
pairs=5
img=""
workdir_parent=/var/tmp
sparse_size_arg=20G
sparse_pairs=3
img_opts_arg=""
keep=0

while (($#)); do
    case $1 in
        --size) size_arg=${2:?--size needs a value}; shift 2 ;;
        --size=*) size_arg=${1#*=}; shift ;;
        --pairs) pairs=${2:?--pairs needs a value}; shift 2 ;;
        --pairs=*) pairs=${1#*=}; shift ;;
        --img) img=${2:?--img needs a value}; shift 2 ;;
        --img=*) img=${1#*=}; shift ;;
        --workdir) workdir_parent=${2:?--workdir needs a value}; shift 2 ;;
        --workdir=*) workdir_parent=${1#*=}; shift ;;
        --sparse-size) sparse_size_arg=${2:?--sparse-size needs a value}; shift 2 ;;
        --sparse-size=*) sparse_size_arg=${1#*=}; shift ;;
        --sparse-pairs) sparse_pairs=${2:?--sparse-pairs needs a value}; shift 2 ;;
        --sparse-pairs=*) sparse_pairs=${1#*=}; shift ;;
        --img-opts) img_opts_arg=${2?--img-opts needs a value}; shift 2 ;;
        --img-opts=*) img_opts_arg=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

size=$(to_bytes "$size_arg")
sparse_size=$(to_bytes "$sparse_size_arg")
[[ $pairs =~ ^[1-9][0-9]*$ ]] || die "--pairs must be a positive integer, got '$pairs'"
[[ $sparse_pairs =~ ^[1-9][0-9]*$ ]] ||
    die "--sparse-pairs must be a positive integer, got '$sparse_pairs'"
((size >= 2 * CHUNK_UNIT)) || die "--size must be at least 128K, got '$size_arg'"
((sparse_size == 0 || sparse_size >= 64 * SPARSE_EXTENT)) ||
    die "--sparse-size must be 0 or at least 16M, got '$sparse_size_arg'"
read -r -a img_opts <<<"$img_opts_arg"

# ---------------------------------------------------------------- tools
[[ -x /usr/bin/time ]] ||
    die "/usr/bin/time (GNU time) is missing; install it with: apt-get install time"
command -v qemu-img >/dev/null || die "qemu-img is missing; install it with: apt-get install qemu-utils"
command -v python3 >/dev/null || die "python3 is missing (used to generate the input images)"
qemu_img=$(command -v qemu-img)

if [[ -z $img ]]; then
    img=$repo_dir/target/release/img
    if [[ ! -x $img ]]; then
        log "building $img (cargo build --release -p tools)"
        (cd "$repo_dir" && cargo build --release -p tools) >&2 ||
            die "cargo build --release -p tools failed"
    fi
fi
[[ -x $img ]] || die "--img '$img' is not an executable file"
img=$(cd "$(dirname "$img")" && pwd)/$(basename "$img")

# ---------------------------------------------------------------- work dir
[[ -d $workdir_parent ]] || die "--workdir '$workdir_parent' is not a directory"
work=$(mktemp -d "$workdir_parent/img-bench-convert.XXXXXX")
cleanup() {
    if ((keep)); then
        log "kept $work"
    else
        rm -rf -- "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fs_type=$(stat -f -c %T "$work")
case $fs_type in
    tmpfs | ramfs)
        die "$work is on $fs_type: sync and writeback mean nothing there;" \
            "pass --workdir on a disk-backed filesystem"
        ;;
esac

# Room for: dense raw + its qcow2 (about half) + one output (at most the full
# size, if zeros are written out), sparse data several times over, and slack.
need=$((size * 5 / 2 + 4 * SPARSE_DATA_MAX + (256 << 20)))
avail=$(df --output=avail -B1 "$work" | tail -n 1 | tr -d ' ')
((avail >= need)) ||
    die "$work has $(human "$avail") free, needs about $(human "$need") for --size $size_arg"

# ---------------------------------------------------------------- inputs
gen_dense() { # path size
    python3 - "$1" "$2" "$CHUNK_UNIT" "$CHUNK_UNITS_MAX" <<'EOF'
import os, random, sys
path, size, unit, units_max = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(20240611)
zeros = memoryview(bytes(unit * units_max))
random_bytes = 0
with open(path, "wb") as f:
    pos = 0
    while pos < size:
        length = rng.randint(1, units_max) * unit
        n = min(length, size - pos)
        f.write(os.urandom(n))
        random_bytes += n
        pos += n
        n = min(length, size - pos)
        f.write(zeros[:n])
        pos += n
print(f"{path}: {size} bytes, {random_bytes} random, {size - random_bytes} zero")
EOF
}

gen_sparse() { # path size data_bytes extent
    python3 - "$@" <<'EOF'
import os, random, sys
path, size, data, extent = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(20240612)
count = data // extent
region = size // count
slots = (region - extent) // 4096 + 1
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(count):
        f.seek(i * region + rng.randrange(slots) * 4096)
        f.write(os.urandom(extent))
print(f"{path}: {size} bytes, {count} extents of {extent} random bytes")
EOF
}

# ---------------------------------------------------------------- running
# run_convert SIDE OUT_FMT SRC DST LOG
# Runs one convert (ours or theirs) under /usr/bin/time, then sync.
# Sets run_secs (wall time of convert + sync), run_rss_kib, run_rc.
run_convert() {
    local side=$1 out_fmt=$2 src=$3 dst=$4 log_file=$5
    local -a cmd
    if [[ $side == ours ]]; then
        cmd=("$img" convert "${img_opts[@]}" -O "$out_fmt" "$src" "$dst")
    else
        cmd=("$qemu_img" convert -W -m 16 -O "$out_fmt" "$src" "$dst")
    fi
    local time_file=$work/time.out start end
    rm -f -- "$dst"
    start=${EPOCHREALTIME/./}
    run_rc=0
    /usr/bin/time -f '%M' -o "$time_file" -- "${cmd[@]}" >"$log_file" 2>&1 || run_rc=$?
    sync
    end=${EPOCHREALTIME/./}
    run_secs=$(awk -v us=$((end - start)) 'BEGIN { printf "%.6f", us / 1e6 }')
    run_rss_kib=$(tail -n 1 "$time_file")
    [[ $run_rss_kib =~ ^[0-9]+$ ]] || run_rss_kib=0
    if ((run_rc != 0)); then
        log "  $side: '${cmd[*]}' exited with status $run_rc:"
        sed 's/^/    /' "$log_file" | tail -n 20 >&2
    fi
}

# measure SIDE OUT_FMT SRC DST: an untimed run, then a timed one (see top).
measure() {
    local side=$1 out_fmt=$2 src=$3 dst=$4
    run_convert "$side" "$out_fmt" "$src" "$dst" "$work/$side.warmup.log"
    ((run_rc == 0)) || return 1
    rm -f -- "$dst"
    sync
    run_convert "$side" "$out_fmt" "$src" "$dst" "$work/$side.log"
    rm -f -- "$dst" # untimed; also keeps disk use down
    ((run_rc == 0))
}

virtual_size() { # fmt path
    "$qemu_img" info -f "$1" --output=json "$2" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

# verify SRC_FMT OUT_FMT SRC DST: DST must hold exactly SRC's guest data.
verify() {
    local src_fmt=$1 out_fmt=$2 src=$3 dst=$4 out src_vsize dst_vsize
    run_convert ours "$out_fmt" "$src" "$dst" "$work/ours.verify.log"
    ((run_rc == 0)) || return 1
    if ! out=$("$qemu_img" compare -f "$src_fmt" -F "$out_fmt" "$src" "$dst" 2>&1); then
        log "  qemu-img compare $src $dst: $out"
        return 1
    fi
    if ! src_vsize=$(virtual_size "$src_fmt" "$src") ||
        ! dst_vsize=$(virtual_size "$out_fmt" "$dst"); then
        log "  qemu-img info failed on $src or $dst"
        return 1
    fi
    if [[ $src_vsize != "$dst_vsize" ]]; then
        log "  virtual size differs: $src has $src_vsize, $dst has $dst_vsize"
        return 1
    fi
    if [[ $out_fmt == qcow2 ]] && ! out=$("$qemu_img" check -f qcow2 "$dst" 2>&1); then
        log "  qemu-img check $dst is not clean:"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        return 1
    fi
    if [[ $out_fmt == qcow2 ]]; then
        log "  correct: qemu-img compare identical, qemu-img check clean"
    else
        log "  correct: qemu-img compare identical"
    fi
    rm -f -- "$dst"
    sync
}

rows=()
failed=0
misses=0

# bench_direction NAME SRC_FMT OUT_FMT SRC PAIRS
bench_direction() {
    local name=$1 src_fmt=$2 out_fmt=$3 src=$4 n=$5
    local dst=$work/out.$out_fmt i side first second
    local -a ours_secs=() theirs_secs=() ratios=()
    local ours_rss=0 theirs_rss=0 ours_time theirs_time

    log "== $name: $(basename "$src") -> $out_fmt, $n pairs"
    if ! verify "$src_fmt" "$out_fmt" "$src" "$dst"; then
        log "  FAILED or INCORRECT: $name"
        rows+=("$(printf '%-20s  %s' "$name" "convert FAILED or output INCORRECT (see stderr); not timed")")
        failed=1
        return 0
    fi

    for ((i = 0; i < n; i++)); do
        if ((i % 2 == 0)); then first=ours second=theirs; else first=theirs second=ours; fi
        for side in $first $second; do
            if ! measure "$side" "$out_fmt" "$src" "$dst"; then
                rows+=("$(printf '%-20s  %s' "$name" "$side convert FAILED (see stderr)")")
                failed=1
                return 0
            fi
            if [[ $side == ours ]]; then
                ours_time=$run_secs
                ours_secs+=("$run_secs")
                ((run_rss_kib > ours_rss)) && ours_rss=$run_rss_kib
            else
                theirs_time=$run_secs
                theirs_secs+=("$run_secs")
                ((run_rss_kib > theirs_rss)) && theirs_rss=$run_rss_kib
            fi
            log "$(printf '  pair %d/%d %-6s %8.3f s %8.1f MiB' $((i + 1)) "$n" "$side" \
                "$run_secs" "$(awk -v k="$run_rss_kib" 'BEGIN { print k / 1024 }')")"
        done
        ratios+=("$(awk -v a="$ours_time" -v b="$theirs_time" 'BEGIN { printf "%.6f", a / b }')")
        log "$(printf '  pair %d/%d ratio  %8.3f' $((i + 1)) "$n" "${ratios[-1]}")"
    done

    local ours_med theirs_med ratio_med ratio_range time_ok rss_ok
    ours_med=$(printf '%s\n' "${ours_secs[@]}" | median)
    theirs_med=$(printf '%s\n' "${theirs_secs[@]}" | median)
    ratio_med=$(printf '%s\n' "${ratios[@]}" | median)
    ratio_range=$(printf '%s\n' "${ratios[@]}" | sort -g |
        awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }')
    if awk -v r="$ratio_med" -v t="$TIME_RATIO_TARGET" 'BEGIN { exit !(r <= t) }'; then
        time_ok=yes
    else
        time_ok=NO
        misses=$((misses + 1))
    fi
    if ((ours_rss <= theirs_rss || ours_rss <= RSS_FLOOR_KIB)); then
        rss_ok=yes
    else
        rss_ok=NO
        misses=$((misses + 1))
    fi
    rows+=("$(printf '%-20s  %9.3f  %9.3f  %6.3f  %-11s  %9.1f  %9.1f  %-5s  %s' \
        "$name" "$ours_med" "$theirs_med" "$ratio_med" "$ratio_range" \
        "$(awk -v k="$ours_rss" 'BEGIN { print k / 1024 }')" \
        "$(awk -v k="$theirs_rss" 'BEGIN { print k / 1024 }')" "$time_ok" "$rss_ok")")
}

# ---------------------------------------------------------------- main
log "img:      $img$( ((${#img_opts[@]})) && printf ' (opts: %s)' "${img_opts[*]}")"
log "          built $(date -r "$img" '+%F %T')"
log "qemu-img: $qemu_img ($("$qemu_img" --version | head -n 1))"
log "workdir:  $work ($fs_type, $(human "$avail") free)"
log "host:     $(uname -r), $(nproc) CPUs"

log "== generating inputs"
gen_dense "$work/dense.raw" "$size" >&2
"$qemu_img" convert -W -m 16 -f raw -O qcow2 "$work/dense.raw" "$work/dense.qcow2"
if ((sparse_size > 0)); then
    sparse_data=$((sparse_size / 16 < SPARSE_DATA_MAX ? sparse_size / 16 : SPARSE_DATA_MAX))
    gen_sparse "$work/sparse.raw" "$sparse_size" "$sparse_data" "$SPARSE_EXTENT" >&2
    "$qemu_img" convert -W -m 16 -f raw -O qcow2 "$work/sparse.raw" "$work/sparse.qcow2"
fi
sync

bench_direction "raw->qcow2" raw qcow2 "$work/dense.raw" "$pairs"
bench_direction "qcow2->raw" qcow2 raw "$work/dense.qcow2" "$pairs"
bench_direction "qcow2->qcow2" qcow2 qcow2 "$work/dense.qcow2" "$pairs"
if ((sparse_size > 0)); then
    bench_direction "sparse raw->qcow2" raw qcow2 "$work/sparse.raw" "$sparse_pairs"
    bench_direction "sparse qcow2->qcow2" qcow2 qcow2 "$work/sparse.qcow2" "$sparse_pairs"
fi

echo
echo "convert: dense $(human "$size") (half random, half zero), $pairs pairs;" \
    "sparse $( ((sparse_size > 0)) && echo "$(human "$sparse_size"), $sparse_pairs pairs" || echo off)"
echo "ours:    $img convert ${img_opts[*]:+${img_opts[*]} }-O FMT SRC DST"
echo "theirs:  qemu-img convert -W -m 16 -O FMT SRC DST"
echo "times are medians (convert + sync); ratio is the median of per-pair ours/theirs"
echo "(range: min-max over pairs; if wide, rerun with more --pairs);"
echo "RSS is the max peak RSS over timed runs. Targets: ratio <= $TIME_RATIO_TARGET;" \
    "our RSS <= qemu-img's or <= $((RSS_FLOOR_KIB / 1024)) MiB."
echo
printf '%-20s  %9s  %9s  %6s  %-11s  %9s  %9s  %-5s  %s\n' \
    direction "ours s" "qemu s" ratio "ratio range" "ours MiB" "qemu MiB" "time" "RSS"
for row in "${rows[@]}"; do
    echo "$row"
done
echo

if ((failed)); then
    echo "CORRECTNESS ERROR: at least one output was wrong or a convert failed (see stderr)"
    exit 1
fi
if ((misses)); then
    echo "$misses target(s) missed (not an error)"
else
    echo "all targets met"
fi
