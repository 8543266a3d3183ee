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
#    virtio_blk; ext4 is built in) whose /init loads them, mounts the disk's
#    ext4 file system, prints its marker file, writes 4 MiB of random data
#    to a new file and prints its MD5, syncs, unmounts and resets (or, with
#    --shell, first gives a busybox shell on the console).
# 3. Makes a qcow2 disk holding an ext4 file system with a marker file,
#    boots it with `vmm --disk path=disk.qcow2`, and asserts what this
#    machine can show (its nested KVM emulates guest ring 0 slowly and
#    cannot run user space): the kernel banner, our exact command line, an
#    e820 map equal to ours, and the RSDP, DSDT and MADT (APIC) lines of our
#    ACPI tables, within the time limit. With --full (a real KVM host) it
#    also waits for the initramfs to load the modules, mount the disk, print
#    the marker, write and unmount, and for vmm's clean exit; then the image
#    must pass qemu-img check and e2fsck, and the file the guest wrote must
#    read back from the image with the MD5 the guest printed.
# 4. --qemu boots the same kernel, initramfs and disk under QEMU's microvm
#    machine with TCG (qemu-system-x86 from bookworm-backports) instead of
#    vmm and makes the --full checks: a reference for the guest side of the
#    test, which this machine can run to the end (vmm needs KVM, and the
#    nested KVM here cannot run user space).
#
# Usage: scripts/stock-kernel.sh [--full] [--shell] [--qemu] [--timeout SECONDS]
#                                [--cache DIR] [--vmm PATH] [--memory 512M]
# Exit status 0 when every assertion holds.

set -euo pipefail

need=()
full=0
shell=0
qemu=0
limit=600
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmm-stock-kernel
vmm=""
memory=512M
while (($#)); do
    case $1 in
        --full) full=1; shift ;;
        --shell) shell=1; full=1; shift ;;
        --qemu) qemu=1; full=1; shift ;;
        --timeout) limit=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --vmm) vmm=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "stock-kernel.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ((qemu)); then
    command -v qemu-system-x86_64 >/dev/null || {
        echo "--qemu needs qemu-system-x86_64 (apt-get install -t bookworm-backports qemu-system-x86)" >&2
        exit 1
    }
elif [[ -z $vmm ]]; then
    (cd "$repo" && cargo build -q --release -p vmm)
    vmm=$repo/target/release/vmm
fi
for tool in cpio lz4 zstd xz mkfs.ext4; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    pkgs=("${need[@]/xz/xz-utils}")
    pkgs=("${pkgs[@]/mkfs.ext4/e2fsprogs}")
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
# In load order: virtio needs virtio_ring; virtio_mmio and virtio_blk need both.
for m in virtio/virtio_ring.ko virtio/virtio.ko virtio/virtio_mmio.ko block/virtio_blk.ko; do
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
for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /lib/modules/$m.ko; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "initramfs: disks: $(ls /sys/block | tr '\n' ' ')"
mkdir -p /mnt
if mount -t ext4 /dev/vda /mnt; then
    echo "initramfs: marker: $(cat /mnt/marker)"
    dd if=/dev/urandom of=/mnt/guest-data bs=64k count=64 2>/dev/null
    echo "initramfs: wrote: $(md5sum </mnt/guest-data | cut -d' ' -f1)"
    sync
    umount /mnt && echo "initramfs: unmounted"
else
    echo "initramfs: mount failed"
fi
if grep -q vmmtest.shell /proc/cmdline; then
    echo "initramfs: shell (exit it to reset)"
    setsid cttyhack sh
fi
reboot -f
EOF
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) >initramfs.cpio.gz

# ---------------------------------------------------------------- boot
rm -rf disk.raw disk.qcow2 disk-root check.raw guest-data
mkdir disk-root
printf 'VMM-STOCK-KERNEL-MARKER\n' >disk-root/marker
mkfs.ext4 -q -F -L vmmtest -d disk-root disk.raw 64M
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
cmdline="console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 pci=off nokaslr rdinit=/init"
((shell)) && cmdline+=" vmmtest.shell"
log=$cache/boot.log
start=$(date +%s)
set +e
if ((qemu)); then
    # The reference: QEMU's microvm (virtio-mmio disks found through its
    # ACPI tables), TCG, the vmlinux entered through its PVH note.
    input=/dev/null
    ((shell)) && input=/dev/stdin
    timeout -s INT "$limit" qemu-system-x86_64 -M microvm,acpi=on -accel tcg -cpu max \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot -m "$memory" \
        -kernel "vmlinux-$kver" -initrd initramfs.cpio.gz -append "$cmdline" \
        -drive id=disk,file=disk.qcow2,format=qcow2,if=none -device virtio-blk-device,drive=disk \
        <"$input" >"$log" 2>&1 &
elif ((shell)); then
    # Interactive: the console is this terminal.
    "$vmm" --kernel "vmlinux-$kver" --initrd initramfs.cpio.gz --memory "$memory" \
        --cmdline "$cmdline" --disk path=disk.qcow2,format=qcow2 2>&1 | tee "$log" &
else
    timeout -s INT "$limit" "$vmm" --kernel "vmlinux-$kver" --initrd initramfs.cpio.gz \
        --memory "$memory" --cmdline "$cmdline" --disk path=disk.qcow2,format=qcow2 \
        </dev/null >"$log" 2>&1 &
fi
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
# Under QEMU only the guest side is ours to check.
((qemu)) && want=("Linux version $kver" "Command line: $cmdline")
((full)) && want+=(
    "initramfs: marker: VMM-STOCK-KERNEL-MARKER"
    "initramfs: wrote: "
    "initramfs: unmounted"
)
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
((full && status != 0)) && { echo "exited with $status"; exit 1; }
qemu-img check -q disk.qcow2
if ((full)); then
    # The guest's file, read back from the image by other people's code.
    qemu-img convert -f qcow2 -O raw disk.qcow2 check.raw
    e2fsck -fn check.raw >/dev/null || { echo "e2fsck finds errors in the guest's file system"; exit 1; }
    debugfs -R "dump /guest-data guest-data" check.raw 2>/dev/null
    wrote=$(sed -n 's/.*initramfs: wrote: \([0-9a-f]*\).*/\1/p' "$log" | head -1)
    got=$(md5sum <guest-data | cut -d' ' -f1)
    [[ -n $wrote && $wrote == "$got" ]] || { echo "guest wrote MD5 $wrote, the image holds $got"; exit 1; }
    echo "the guest's 4 MiB file reads back from the image (MD5 $got)"
fi
echo "all expected lines seen"
