#!/usr/bin/env bash
# Benchmark of `vm` managing many domains (a script, not a timed test):
#  - 50 defined domains of which 20 run the idle test guest (32 MiB each):
#    `vm list --all` and `vm domstats` (all domains) against
#    `virsh -c test:///FILE list --all` and `domstats` over the same 50
#    domains as test-driver definitions (libvirt's in-process driver, no
#    daemon: a floor for virsh), alternating ours and theirs, medians and
#    ratios over --runs pairs;
#  - `vm start` to the guest's first serial byte (console.log grows) and
#    `vm shutdown` to the VMM's exit, medians over --runs starts;
#  - the VMMs' peak RSS (VmHWM) per idle VM.
# Targets (issue 13): list and domstats at most 1x the test driver's time;
# start to first byte under 25 ms; under 5 MiB VMM overhead per idle VM.
#
# Usage: bench/manage.sh [--runs 10] [--defined 50] [--running 20]
set -euo pipefail
runs=10
defined=50
running=20
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --defined) defined=$2; shift 2 ;;
        --running) running=$2; shift 2 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "manage.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/ensure-libvirt.sh
cargo build -q --release -p tools -p vmm
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
export GUEST=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
export VM=$target/release/vm
export IMG=$target/release/img
work=$(mktemp -d "${TMPDIR:-/var/tmp}/vm-bench.XXXXXX")
cleanup() {
    for n in $(seq -w 1 "$defined"); do
        "$VM" -c "$work/store" -q destroy "dom$n" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work" "$runs" "$defined" "$running" <<'PY'
import os, statistics, subprocess, sys, time
work, runs, defined, running = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
VM, IMG, GUEST = os.environ["VM"], os.environ["IMG"], os.environ["GUEST"]
store = os.path.join(work, "store")
names = [f"dom{i:02d}" for i in range(1, defined + 1)]

def vm(*args, check=True):
    p = subprocess.run([VM, "-c", store, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"vm {' '.join(args)} failed: {p.stderr}")
    return p

def domain_xml(name, kind):
    image = os.path.join(work, f"{name}.qcow2")
    state = "<test:runstate>5</test:runstate>" if kind == "test" and name not in names[:running] else ""
    return (f"<domain type='{kind}' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type><kernel>{GUEST}</kernel><cmdline>guest.mode=idle</cmdline></os>"
            f"<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk></devices>{state}</domain>\n")

node = ["<node>\n"]
for n in names:
    subprocess.run([IMG, "create", "-q", "-f", "qcow2", os.path.join(work, f"{n}.qcow2"), "16M"], check=True)
    path = os.path.join(work, f"{n}.xml")
    with open(path, "w") as f:
        f.write(domain_xml(n, "kvm"))
    vm("define", path)
    node.append(domain_xml(n, "test"))
node.append("</node>\n")
node_file = os.path.join(work, "node.xml")
with open(node_file, "w") as f:
    f.write("".join(node))

def timed(cmd):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed: {p.stderr.decode()}")
    return time.monotonic() - t0

# Start to first serial byte, and shutdown to exit, on the first domain.
first_bytes, exits = [], []
probe = names[0]
log = os.path.join(store, "run", probe, "console.log")
for _ in range(runs):
    try:
        os.remove(log)
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    p = subprocess.Popen([VM, "-c", store, "start", probe], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        try:
            if os.stat(log).st_size > 0:
                break
        except FileNotFoundError:
            pass
        if time.monotonic() - t0 > 10:
            sys.exit("no serial output within 10 s")
        time.sleep(0.0001)
    first_bytes.append(time.monotonic() - t0)
    p.wait()
    pid = int(open(os.path.join(store, "run", probe, "pid")).read().split()[0])
    # The guest hears the power button once it printed "guest: idle".
    while "guest: idle" not in open(log, errors="replace").read():
        if time.monotonic() - t0 > 10:
            sys.exit("the guest never became idle")
        time.sleep(0.001)
    t0 = time.monotonic()
    vm("shutdown", probe)
    while True:
        try:
            stat = open(f"/proc/{pid}/stat").read()
            if stat[stat.rfind(")") + 2] == "Z":
                break
        except FileNotFoundError:
            break
        if time.monotonic() - t0 > 10:
            sys.exit("the VMM did not exit within 10 s of shutdown")
        time.sleep(0.0001)
    exits.append(time.monotonic() - t0)
    vm("list", "--all")  # cleans the run folder up

# Start `running` domains, all at once.
procs = [subprocess.Popen([VM, "-c", store, "start", n], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
         for n in names[:running]]
for p in procs:
    if p.wait() != 0:
        sys.exit(f"start failed: {p.stderr.read().decode()}")
listing = vm("-q", "list").stdout
assert listing.count("running") == running, listing
ours_list, theirs_list, ours_stats, theirs_stats = [], [], [], []
uri = f"test://{node_file}"
timed([VM, "-c", store, "list", "--all"]); timed(["virsh", "-c", uri, "list", "--all"])
for _ in range(runs):
    ours_list.append(timed([VM, "-c", store, "list", "--all"]))
    theirs_list.append(timed(["virsh", "-c", uri, "list", "--all"]))
    ours_stats.append(timed([VM, "-c", store, "domstats"]))
    theirs_stats.append(timed(["virsh", "-c", uri, "domstats"]))
peaks = []
for n in names[:running]:
    pid = int(open(os.path.join(store, "run", n, "pid")).read().split()[0])
    status = open(f"/proc/{pid}/status").read()
    peaks.append(int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]))
for n in names[:running]:
    vm("destroy", n)

ms = lambda xs: statistics.median(xs) * 1000
print(f"{defined} domains defined, {running} running (idle guest, 32 MiB), {runs} runs")
print(f"vm list --all      {ms(ours_list):8.2f} ms   virsh test:/// {ms(theirs_list):8.2f} ms   ratio {ms(ours_list)/ms(theirs_list):.2f} (target <= 1)")
print(f"vm domstats        {ms(ours_stats):8.2f} ms   virsh test:/// {ms(theirs_stats):8.2f} ms   ratio {ms(ours_stats)/ms(theirs_stats):.2f} (target <= 1)")
print(f"vm start to first serial byte  {ms(first_bytes):8.2f} ms (median; min {min(first_bytes)*1000:.2f}; target < 25)")
print(f"vm shutdown to VMM exit        {ms(exits):8.2f} ms (median; min {min(exits)*1000:.2f})")
print(f"VMM peak RSS per idle VM       {statistics.median(peaks)/1024:8.2f} MiB median, {max(peaks)/1024:.2f} MiB max (guest RAM it touched included; target < 5)")
PY
