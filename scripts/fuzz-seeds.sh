#!/usr/bin/env bash
# Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/:
# small qcow2 images made by qemu-img (create, convert -c, snapshot, with
# qemu-io writing data) and by our img, across feature combinations
# (compat 0.10/1.1, cluster sizes 512/4k/64k, refcount_bits 1/16/64,
# extended_l2, lazy_refcounts, zlib and zstd compressed clusters, internal
# snapshots, backing file names, external data file names, zero clusters,
# preallocation=metadata). Every image has a tiny virtual size so that each
# seed stays under a few hundred KiB.
#
#   open_image      whole images
#   header          the first 4 KiB of each image (the header cluster)
#   snapshot_table  snapshot tables cut out of the images that have one,
#                   and patch inputs for the target's own templates (see
#                   fuzz/fuzz_targets/snapshot_table_body.rs)
#   virtio_blk      guest memory and queue layouts with well-formed chains
#                   of every request type (direct and indirect, one or two
#                   queues, resets, read-only, failing backend) and a few
#                   nasty layouts, built by fuzz/fuzz_targets/virtio_blk_seeds.rs
#                   through blockdev's stable replay test
#   api_request     HTTP requests to the VMM's API socket, from
#                   fuzz/fuzz_targets/api_request_body.rs through vmapi's
#                   stable replay test
#   vm_state        a machine state and a RAM stream, from
#                   fuzz/fuzz_targets/vm_state_body.rs through vmm's
#                   stable replay test
#   migration_stream  a whole migration stream, one with Disk frames and a
#                   cancelled one, from
#                   fuzz/fuzz_targets/migration_stream_body.rs through
#                   vmm's stable replay test
#
# Usage: scripts/fuzz-seeds.sh   (needs qemu-img and qemu-io; builds img)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cargo build -q -p tools
img="${CARGO_TARGET_DIR:-$root/target}/debug/img"
corpus=$root/fuzz/corpus
mkdir -p "$corpus/open_image" "$corpus/header" "$corpus/snapshot_table" "$corpus/virtio_blk" "$corpus/domain_xml"
# domain_xml: the hand-made and found inputs of vm's XML reader, and the
# domain XMLs its tests define.
cp "$root"/tools/tests/vm_xml_fuzz_regressions/* "$corpus/domain_xml/"
bash "$root/fuzz/domain_xml_seeds.sh" "$corpus/domain_xml"
# iso9660: discs xorriso builds (fuzz/iso9660_seeds.sh).
bash "$root/fuzz/iso9660_seeds.sh" "$corpus/iso9660"
# virtio_blk needs neither qemu nor img: its seeds come from the target's
# own seed builder, run (and checked) by the stable test that replays it.
VIRTIO_FUZZ_SEEDS=$corpus/virtio_blk cargo test -q -p blockdev --test virtio_fuzz_regressions \
    seeds_reach_every_request_type >/dev/null
# api_request: requests as curl and vmapi::Client send them, from the
# target's own seed list, likewise.
mkdir -p "$corpus/api_request"
API_FUZZ_SEEDS=$corpus/api_request cargo test -q -p vmapi --test api_fuzz_regressions \
    seeds_parse_and_decode >/dev/null
mkdir -p "$corpus/vm_state"
STATE_FUZZ_SEEDS=$corpus/vm_state cargo test -q -p vmm --test state_fuzz_regressions \
    seeds_parse_and_every_flipped_byte_is_refused >/dev/null
mkdir -p "$corpus/migration_stream"
cp "$root"/vmm/tests/migration_fuzz_regressions/* "$corpus/migration_stream/"
MIGRATION_FUZZ_SEEDS=$corpus/migration_stream cargo test -q -p vmm --test migration_fuzz_regressions \
    seeds_are_accepted_and_every_flipped_byte_is_refused >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Deterministic source data: 16 KiB of text, 16 KiB of zeros, 16 KiB of
# counting bytes, 16 KiB of a repeated word.
seq 1 4000 >text
truncate -s 16K text
cat text >src.raw
truncate -s 32K src.raw
for i in $(seq 0 63); do printf "$(printf '\\%03o' $((i * 4 % 256)))%.0s" $(seq 1 256); done >>src.raw
for i in $(seq 1 2731); do printf 'qcow2\n'; done >word
truncate -s 16K word
cat word >>src.raw

n=0
seed() { # seed NAME FILE: keep FILE as seed NAME if it is small enough
    local size
    size=$(stat -c %s "$2")
    if [ "$size" -gt $((640 * 1024)) ]; then
        echo "skipping $1: $size bytes" >&2
        return
    fi
    cp "$2" "$corpus/open_image/$1.qcow2"
    head -c 4096 "$2" >"$corpus/header/$1.hdr"
    n=$((n + 1))
}

io() { # io FILE CMD...: qemu-io commands on a qcow2 image
    local f=$1
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f qcow2 "${args[@]}" "$f" >/dev/null
}

# A small workload: data, a zero cluster, a discard, a partial write.
fill() { # fill FILE CLUSTER_SIZE
    local cs=$2
    io "$1" "write -P 0x11 0 $cs" "write -P 0x22 $((3 * cs)) $((2 * cs))" \
        "write -z $cs $cs" "write -P 0x33 $((cs / 2 + 7)) 100" "discard $((4 * cs)) $cs"
}

# qemu-img create across options, with data written by qemu-io.
for compat in 0.10 1.1; do
    for cs in 512 4096 65536; do
        for rb in 1 16 64; do
            if [ "$compat" = 0.10 ] && [ "$rb" != 16 ]; then continue; fi
            f=q-c$compat-cs$cs-rb$rb.qcow2
            qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=$cs,refcount_bits=$rb "$f" $((32 * cs))
            fill "$f" $cs
            seed "${f%.qcow2}" "$f"
        done
    done
done
for cs in 512 4096 65536; do
    f=q-extl2-cs$cs.qcow2
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$((cs < 16384 ? 16384 : cs)) "$f" 256K
    fill "$f" 2048
    seed "${f%.qcow2}" "$f"
done
f=q-extl2-small.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k "$f" 128K
io "$f" "write -P 0x44 1024 3000" "write -z 8192 1024"
seed "${f%.qcow2}" "$f"

# Lazy refcounts, left dirty (qemu-io aborts without closing).
for cs in 512 4096; do
    f=q-lazy-cs$cs.qcow2
    qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=$cs "$f" $((16 * cs))
    io "$f" "write -P 0x55 0 $((3 * cs))" "sigraise 9" 2>/dev/null || true
    seed "${f%.qcow2}" "$f"
    f=q-lazy-clean-cs$cs.qcow2
    qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=$cs "$f" $((16 * cs))
    fill "$f" $cs
    seed "${f%.qcow2}" "$f"
done

# Compressed clusters, zlib and zstd, from qemu-img convert -c and
# qemu-io write -c.
for ct in zlib zstd; do
    for cs in 512 4096 65536; do
        f=q-comp-$ct-cs$cs.qcow2
        qemu-img convert -q -c -f raw -O qcow2 -o compression_type=$ct,cluster_size=$cs src.raw "$f"
        seed "${f%.qcow2}" "$f"
    done
    f=q-comp-io-$ct.qcow2
    qemu-img create -q -f qcow2 -o compression_type=$ct,cluster_size=4k "$f" 64K
    io "$f" "write -c -P 0x66 0 4k" "write -c -P 0x67 8k 4k" "write -P 0x68 4k 4k"
    seed "${f%.qcow2}" "$f"
done
f=q-comp-v2.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=4k src.raw "$f"
seed "${f%.qcow2}" "$f"

# Internal snapshots.
for cs in 512 4096 65536; do
    f=q-snap-cs$cs.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$f" $((16 * cs))
    # With 64 KiB clusters every cluster counts: snapshots of an empty disk.
    if [ $cs -lt 65536 ]; then io "$f" "write -P 0x71 0 $cs"; fi
    qemu-img snapshot -c first "$f"
    if [ $cs -lt 65536 ]; then
        io "$f" "write -P 0x72 0 $((cs / 2))" "write -P 0x73 $((2 * cs)) $cs"
        qemu-img snapshot -c second "$f"
        qemu-img snapshot -c third "$f"
        qemu-img snapshot -d second "$f"
    else
        qemu-img snapshot -c second "$f"
    fi
    seed "${f%.qcow2}" "$f"
done
f=q-snap-v2.qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$f" 8K
io "$f" "write -P 0x74 0 1k"
qemu-img snapshot -c old "$f"
io "$f" "write -P 0x75 512 512"
seed "${f%.qcow2}" "$f"
f=q-snap-rb64-extl2.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on,refcount_bits=64 "$f" 64K
io "$f" "write -P 0x76 1k 2k"
qemu-img snapshot -c s "$f"
io "$f" "write -P 0x77 1k 1k"
seed "${f%.qcow2}" "$f"

# Backing file names (the backing files are not part of the seed) and
# external data file names.
qemu-img create -q -f raw base.raw 64K
f=q-backing.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw "$f" 64K
io "$f" "write -P 0x81 4k 4k"
seed "${f%.qcow2}" "$f"
f=q-backing-v2-unsafe.qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 -u -b some/where/base.img -F qcow2 "$f" 16K
seed "${f%.qcow2}" "$f"
for raw in off on; do
    f=q-datafile-$raw.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4k,data_file=data-$raw.raw,data_file_raw=$raw "$f" 64K
    io "$f" "write -P 0x91 0 8k"
    seed "${f%.qcow2}" "$f"
done

# Preallocation.
for cs in 512 4096; do
    f=q-prealloc-meta-cs$cs.qcow2
    qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=$cs "$f" $((32 * cs))
    seed "${f%.qcow2}" "$f"
done
f=q-prealloc-meta-extl2.qcow2
qemu-img create -q -f qcow2 -o preallocation=metadata,extended_l2=on,cluster_size=16k "$f" 64K
seed "${f%.qcow2}" "$f"

# Images made by our img.
for o in compat=0.10,cluster_size=512 compat=1.1,cluster_size=4k,refcount_bits=1 \
    cluster_size=512,refcount_bits=64,lazy_refcounts=on cluster_size=16k,extended_l2=on \
    cluster_size=4k,preallocation=metadata; do
    f=img-create-$(echo "$o" | tr ',=' '-_').qcow2
    "$img" create -q -f qcow2 -o "$o" "$f" 64K >/dev/null
    io "$f" "write -P 0xa1 0 3k" "write -z 8k 4k"
    seed "${f%.qcow2}" "$f"
done
for ct in zlib zstd; do
    f=img-convert-c-$ct.qcow2
    "$img" convert -c -f raw -O qcow2 -o compression_type=$ct,cluster_size=4k src.raw "$f"
    seed "${f%.qcow2}" "$f"
done
f=img-convert-cs512.qcow2
"$img" convert -f raw -O qcow2 -o cluster_size=512 src.raw "$f"
"$img" snapshot -c one "$f"
io "$f" "write -P 0xa2 0 1k"
"$img" snapshot -c two "$f"
seed "${f%.qcow2}" "$f"

# snapshot_table: raw tables cut out of the images with snapshots (a 6-byte
# prefix: template selector, nb_snapshots, placement), then patch inputs
# for each template (mode bit 3 of byte 0).
be32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)))"; }
u32at() { od -An -tu1 -j"$2" -N4 "$1" | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }'; }
u64at() { echo $(($(u32at "$1" "$2") * 4294967296 + $(u32at "$1" $(($2 + 4))))); }
t=0
for f in q-snap-*.qcow2 img-convert-cs512.qcow2; do
    nb=$(u32at "$f" 60)
    off=$(u64at "$f" 64)
    for sel in 0 1 2 3; do
        out=$corpus/snapshot_table/raw-${f%.qcow2}-t$sel.bin
        { printf "$(printf '\\%03o' $sel)"; be32 "$nb"; printf '\000'; dd if="$f" iflag=skip_bytes,count_bytes skip="$off" count=1024 status=none; } >"$out"
        t=$((t + 1))
    done
done
for sel in 0 1 2 3 4 5 6 16 17 18 19 32 33 34 35 48 49 50 51; do
    b=$(printf '\\%03o' $((sel | 8)))
    printf "$b\000\000\000\000\000" >"$corpus/snapshot_table/patch-$sel.bin"
    # Patches: the first entry's l1_size, the second entry's name length.
    printf "$b\000\000\000\000\000\000\013\003" >"$corpus/snapshot_table/patch-$sel-l1size.bin"
    printf "$b\000\000\000\000\000\000\017\377" >"$corpus/snapshot_table/patch-$sel-namelen.bin"
    t=$((t + 3))
done
# Misaligned and cut-short placements, and a verbatim huge count.
printf '\010\000\000\000\000\003' >"$corpus/snapshot_table/patch-misaligned.bin"
printf '\011\000\000\000\000\200' >"$corpus/snapshot_table/patch-cut.bin"
printf '\111\000\001\000\000\000' >"$corpus/snapshot_table/patch-count.bin"
t=$((t + 3))

# vpc, vdi, vmdk, qed and vhdx: images qemu-img makes in every subformat and option
# (small sizes, some data from src.raw), and the kept regression inputs.
f=0
for spec in "vpc:" "vpc:subformat=fixed" "vpc:force_size=on" "vdi:" "vdi:static=on" \
    "vmdk:" "vmdk:subformat=streamOptimized" "vmdk:zeroed_grain=on" "vmdk:subformat=monolithicFlat" \
    "vmdk:compat6=on,adapter_type=lsilogic" "vmdk:hwversion=7,adapter_type=legacyESX" \
    "qed:" "qed:cluster_size=4k,table_size=2" "qed:cluster_size=16k,table_size=16" \
    "vhdx:" "vhdx:subformat=fixed,block_size=1M" "vhdx:block_size=1M,log_size=2M,block_state_zero=off" \
    "vpc:subformat=fixed,force_size=on"; do
    fmt=${spec%%:*}
    opts=${spec#*:}
    mkdir -p "$corpus/$fmt"
    qemu-img convert -q -f raw -O "$fmt" ${opts:+-o "$opts"} src.raw "seed-$f.$fmt"
    cp "seed-$f.$fmt" "$corpus/$fmt/qemu-$f"
    qemu-img create -q -f "$fmt" ${opts:+-o "$opts"} "empty-$f.$fmt" 3M
    cp "empty-$f.$fmt" "$corpus/$fmt/qemu-empty-$f"
    f=$((f + 2))
done
# A vhdx whose log holds one entry to replay (a host that crashed between
# logging a sector and applying it): the replay path's seed.
qemu-img convert -q -f raw -O vhdx src.raw dirty-src.vhdx
python3 - dirty-src.vhdx "$corpus/vhdx/dirty-log" <<'PY'
import struct, sys
def crc32c(data):
    crc = 0xffffffff
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff
img = bytearray(open(sys.argv[1], "rb").read())
guid = bytes([0x42] * 16)
heads = [64 << 10, 128 << 10]
cur = max(heads, key=lambda o: struct.unpack_from("<Q", img, o + 8)[0])
log_offset = struct.unpack_from("<Q", img, cur + 72)[0]
entry = bytearray(8192)
entry[0:4] = b"loge"
struct.pack_into("<IIQI", entry, 8, 8192, 0, 1, 1)
entry[32:48] = guid
struct.pack_into("<QQ", entry, 48, len(img), len(img))
entry[64:68] = b"desc"
struct.pack_into("<IQQQ", entry, 68, 0xcdcdcdcd, 0xcdcdcdcdcdcdcdcd, len(img) - 4096, 1)
entry[4096:4100] = b"data"
entry[4104:8188] = b"\xcd" * 4084
struct.pack_into("<I", entry, 8188, 1)
struct.pack_into("<I", entry, 4, crc32c(bytes(entry)))
img[log_offset:log_offset + 8192] = entry
seq = struct.unpack_from("<Q", img, cur + 8)[0]
for i, off in enumerate(heads):
    h = bytearray(img[cur:cur + 4096])
    struct.pack_into("<Q", h, 8, seq + 1 + i)
    h[48:64] = guid
    h[4:8] = bytes(4)
    struct.pack_into("<I", h, 4, crc32c(bytes(h)))
    img[off:off + 4096] = h
open(sys.argv[2], "wb").write(img)
PY
f=$((f + 1))
for kept in "$root"/qcow/tests/formats_fuzz_regressions/*; do
    name=$(basename "$kept")
    cp "$kept" "$corpus/${name%%-*}/$name"
    f=$((f + 1))
done

echo "wrote $n images (open_image, header), $f vpc/vdi/vmdk/qed/vhdx inputs, $t snapshot_table inputs and $(ls "$corpus/virtio_blk" | wc -l) virtio_blk inputs under $corpus"
du -sh "$corpus"/open_image "$corpus"/header "$corpus"/snapshot_table "$corpus"/virtio_blk "$corpus"/domain_xml "$corpus"/vpc "$corpus"/vdi "$corpus"/vmdk "$corpus"/qed "$corpus"/vhdx
