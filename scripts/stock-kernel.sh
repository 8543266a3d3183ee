#!/usr/bin/env bash
# Boot Debian's stock cloud kernel under `vmm` with a qcow2 disk (on demand;
# also run by the ignored test `cargo test -p vmm --test stock_kernel --
# --ignored`).
#
# 1. Downloads linux-image-cloud-amd64's versioned package (resolved with
#    apt-cache depends) and busybox-static by name, into a cache directory.
# 2. Extracts the kernel, decompresses its vmlinux (entered at its 64-bit
#    entry, skipping the decompressor), and builds an initramfs from busybox
#    and the kernel's own virtio modules (virtio, virtio_ring, virtio_mmio,
#    virtio_blk) whose /init loads them, reads the disk's marker sector and
#    powers off.
# 3. Makes a qcow2 disk whose first sector holds a marker line, boots it with
#    `vmm --disk path=disk.qcow2`, and asserts what this machine can show
#    (its nested KVM emulates guest ring 0 slowly and cannot run user space):
#    the kernel banner, our exact command line, an e820 map equal to ours, and
#    the RSDP, DSDT and MADT (APIC) lines of our ACPI tables, within the time
#    limit. With --full (a real KVM host) it also waits for the initramfs to
#    find the disk and print the marker, and for the clean exit.
#
# Usage: scripts/stock-kernel.sh [--full] [--timeout SECONDS] [--cache DIR]
#                                [--vmm PATH] [--memory 512M]
# Exit status 0 when every assertion holds.

set -euo pipefail

need=()
full=0
limit=600
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmm-stock-kernel
vmm=""
memory=512M
while (($#)); do
    case $1 in
        --full) full=1; shift ;;
        --timeout) limit=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --vmm) vmm=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "stock-kernel.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z $vmm ]]; then
    (cd "$repo" && cargo build -q --release -p vmm)
    vmm=$repo/target/release/vmm
fi
for tool in cpio lz4 zstd xz; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    pkgs=("${need[@]/xz/xz-utils}")
    apt-get install -y -q "${pkgs[@]}" >&2
fi
mkdir -p "$cache"
cd "$cache"

# ---------------------------------------------------------------- packages
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[[ -n $pkg ]] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
kver=${pkg#linux-image-}
if [[ ! -d kernel-$kver ]]; then
    rm -f "${pkg}"_*.deb
    apt-get download "$pkg" >&2
    dpkg-deb -x "${pkg}"_*.deb "kernel-$kver"
fi
if [[ ! -x busybox/bin/busybox ]]; then
    rm -f busybox-static_*.deb
    apt-get download busybox-static >&2
    dpkg-deb -x busybox-static_*.deb busybox
fi
bzimage=kernel-$kver/boot/vmlinuz-$kver
moddir=kernel-$kver/lib/modules/$kver/kernel/drivers

# The uncompressed vmlinux: the payload the bzImage's setup header points
# at (payload_offset/payload_length), decompressed by its magic.
if [[ ! -s vmlinux-$kver ]]; then
    python3 - "$bzimage" "vmlinux-$kver" <<'EOF'
import struct, subprocess, sys
data = open(sys.argv[1], 'rb').read()
setup_sects = data[0x1f1] or 4
offset, length = struct.unpack_from('<II', data, 0x248)
start = (setup_sects + 1) * 512 + offset
payload = data[start:start + length]
tools = [(b'\x1f\x8b', ['gzip', '-dc']), (b'\xfd7zXZ', ['xz', '-dc']),
         (b'\x28\xb5\x2f\xfd', ['zstd', '-dc']), (b'\x02\x21\x4c\x18', ['lz4', '-dc']),
         (b'\x5d\x00', ['xz', '--format=lzma', '-dc']), (b'BZh', ['bzip2', '-dc'])]
for magic, cmd in tools:
    if payload.startswith(magic):
        out = subprocess.run(cmd, input=payload, capture_output=True).stdout
        if out[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(out)
            sys.exit(0)
        sys.exit('decompressing with %s did not give an ELF' % cmd[0])
sys.exit('unknown compression %s in %s' % (payload[:4].hex(), sys.argv[1]))
EOF
fi

# ---------------------------------------------------------------- initramfs
rm -rf initramfs && mkdir -p initramfs/{bin,dev,proc,sys,lib/modules}
cp busybox/bin/busybox initramfs/bin/
for m in virtio/virtio.ko virtio/virtio_ring.ko virtio/virtio_mmio.ko block/virtio_blk.ko; do
    src=$(ls "$moddir/$m"* 2>/dev/null | head -1)
    [[ -n $src ]] || { echo "module $m missing in $moddir" >&2; exit 1; }
    case $src in
        *.xz) xz -dc "$src" >"initramfs/lib/modules/$(basename "${m}")" ;;
        *.zst) zstd -qdc "$src" >"initramfs/lib/modules/$(basename "${m}")" ;;
        *) cp "$src" "initramfs/lib/modules/" ;;
    esac
done
cat >initramfs/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio virtio_ring virtio_mmio virtio_blk; do insmod /lib/modules/$m.ko; done
sleep 1
echo "initramfs: disks: $(ls /sys/block | tr '\n' ' ')"
echo "initramfs: marker: $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1)"
reboot -f
EOF
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) >initramfs.cpio.gz

# ---------------------------------------------------------------- boot
rm -f disk.raw disk.qcow2
printf 'VMM-STOCK-KERNEL-MARKER\n' | dd of=disk.raw bs=512 conv=sync status=none
truncate -s 64M disk.raw
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
cmdline="console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 pci=off nokaslr rdinit=/init"
log=$cache/boot.log
start=$(date +%s)
set +e
timeout -s INT "$limit" "$vmm" --kernel "vmlinux-$kver" --initrd initramfs.cpio.gz \
    --memory "$memory" --cmdline "$cmdline" --disk path=disk.qcow2,format=qcow2 \
    </dev/null >"$log" 2>&1 &
pid=$!
# The e820 map we build (memory below the 3 GiB MMIO gap here) and the
# command line with the disk's entry the VMM appends.
mem_bytes=$(awk -v m="$memory" 'BEGIN { n = m + 0; u = substr(m, length(m));
    f = (u == "G") ? 2^30 : (u == "K") ? 2^10 : 2^20; printf "%d", n * f }')
low_end=$(printf '0x%016x' $((mem_bytes - 1)))
want=(
    "Linux version $kver"
    "Command line: $cmdline virtio_mmio.device=4K@0xd0000000:5"
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"
    "BIOS-e820: [mem 0x0000000000100000-${low_end}] usable"
    "ACPI: RSDP 0x00000000000E0000"
    "ACPI: DSDT 0x"
    "ACPI: APIC 0x"
)
((full)) && want+=("initramfs: marker: VMM-STOCK-KERNEL-MARKER")
missing=("${want[@]}")
while kill -0 "$pid" 2>/dev/null; do
    still=()
    for w in "${missing[@]}"; do grep -qF -- "$w" "$log" || still+=("$w"); done
    missing=("${still[@]}")
    ((${#missing[@]} == 0)) && break
    sleep 2
done
if ((full)); then wait "$pid"; status=$?; else kill -INT "$pid" 2>/dev/null; wait "$pid"; status=0; fi
set -e
still=()
for w in "${missing[@]}"; do grep -qF -- "$w" "$log" || still+=("$w"); done
echo "stock kernel $kver: $(( $(date +%s) - start )) s, log in $log"
if ((${#still[@]})); then
    printf 'missing: %s\n' "${still[@]}"
    tail -20 "$log"
    exit 1
fi
((full && status != 0)) && { echo "vmm exited with $status"; exit 1; }
qemu-img check -q disk.qcow2
echo "all expected lines seen"
