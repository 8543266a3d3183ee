#!/usr/bin/env bash
# Benchmark of `vm install` (a script, not a timed test), each to the
# guest's first serial byte (its console.log grows):
#  - `vm install --disk size=20 --boot kernel=GUEST --noautoconsole`: a
#    20 GiB qcow2 made through the qcow library, the domain defined and
#    started;
#  - `vm install --cdrom ISO --disk size=20 --noautoconsole` of an ISO
#    xorriso builds (isolinux.cfg naming the test guest): the disc read,
#    its kernel found and copied into the store, then the same.
# Each run ends with destroy and undefine (and the image removed); medians
# and minimums over --runs installs of each, alternating.
#
# Usage: bench/install.sh [--runs 10]
set -euo pipefail
runs=10
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/ensure-xorriso.sh
cargo build -q --release -p tools -p vmm
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
export GUEST=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
export VM=$target/release/vm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/isolinux" "$work/tree/boot"
cp "$GUEST" "$work/tree/boot/guest"
printf 'default guest\nlabel guest\n  kernel /boot/guest\n  append guest.mode=idle\n' >"$work/tree/isolinux/isolinux.cfg"
xorriso -as mkisofs -quiet -R -J -V INSTALLER -o "$work/installer.iso" "$work/tree" 2>/dev/null
export ISO=$work/installer.iso STORE=$work/store RUNS=$runs
python3 - <<'PY'
import os, statistics, subprocess, time

vm, guest, iso, store, runs = os.environ["VM"], os.environ["GUEST"], os.environ["ISO"], os.environ["STORE"], int(os.environ["RUNS"])

def run(*args):
    subprocess.run([vm, "-c", store, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def install_to_first_byte(name, method):
    log = os.path.join(store, "run", name, "console.log")
    t0 = time.monotonic()
    run("install", "--name", name, "--memory", "32", "--disk", "size=20", *method, "--noautoconsole")
    while not (os.path.exists(log) and os.path.getsize(log) > 0):
        if time.monotonic() - t0 > 20:
            raise SystemExit(f"{name}: no serial output within 20 s")
        time.sleep(0.0002)
    elapsed = time.monotonic() - t0
    run("destroy", name)
    run("undefine", name, "--remove-all-storage")
    return elapsed

boot = ["--boot", f"kernel={guest},kernel_args=console=ttyS0 guest.mode=idle"]
cdrom = ["--cdrom", iso]
install_to_first_byte("warm", boot)  # untimed: page cache and binaries
times = {"boot": [], "cdrom": []}
for i in range(runs):
    times["boot"].append(install_to_first_byte(f"b{i}", boot))
    times["cdrom"].append(install_to_first_byte(f"c{i}", cdrom))
ms = lambda xs: statistics.median(xs) * 1000
print(f"vm install --disk size=20 --boot kernel=... to first serial byte  {ms(times['boot']):7.2f} ms (median; min {min(times['boot'])*1000:.2f})")
print(f"vm install --disk size=20 --cdrom ISO to first serial byte       {ms(times['cdrom']):7.2f} ms (median; min {min(times['cdrom'])*1000:.2f})")
PY
