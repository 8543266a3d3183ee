#!/usr/bin/env bash
# Writes seed images for the iso9660 target into DIR with xorriso: Rock
# Ridge with Joliet, Joliet alone, plain ISO 9660, an El Torito disc laid
# out as an installer (isolinux.cfg, a kernel and an initrd), a Rock Ridge
# name long enough for a SUSP continuation area, a tree deep enough that
# Rock Ridge relocates it (CL, PL, RE entries), and the inputs kept in
# iso/tests/iso_fuzz_regressions/.
set -euo pipefail
dir=${1:?usage: iso9660_seeds.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../scripts/ensure-xorriso.sh"
mkdir -p "$dir"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/isolinux" "$tree/install.amd" "$tree/Deep/Er"
printf 'default install\nlabel install\n  kernel /install.amd/vmlinuz\n  append initrd=/install.amd/initrd.gz console=ttyS0\n' >"$tree/isolinux/isolinux.cfg"
head -c 3000 /dev/urandom >"$tree/install.amd/vmlinuz"
head -c 100 /dev/urandom >"$tree/install.amd/initrd.gz"
head -c 512 /dev/zero >"$tree/isolinux/isolinux.bin"
echo x >"$tree/Deep/Er/file.txt"
mkdir -p "$tree/r/e/l/o/c/a/t/e/d/x"
echo deep >"$tree/r/e/l/o/c/a/t/e/d/x/deep.txt"
echo long >"$tree/$(printf 'n%.0s' $(seq 1 240))"
q() { xorriso -as mkisofs -quiet -no-pad -V SEED "$@" "$tree" 2>/dev/null; }
q -R -J -o "$dir/rr_joliet.iso"
q -R -rr_reloc_dir RR_MOVED -o "$dir/rr_relocated.iso"
q --norock -J -joliet-long -o "$dir/joliet.iso"
q --norock -o "$dir/plain.iso"
q -R -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -o "$dir/eltorito.iso"
cp "$here"/../iso/tests/iso_fuzz_regressions/* "$dir/" 2>/dev/null || true
