#!/usr/bin/env bash
# Benchmark of snapshots of a running VM kept inside the qcow2 image (not a
# test): QEMU 10's savevm/loadvm (HMP over a monitor socket,
# qemu-system-x86_64 -M microvm -enable-kvm) against `vm snapshot-create-as`
# and `vm snapshot-revert`, both running the same test guest
# (guest.mode=count guest.fill=256: 512 MiB of RAM of which 256 MiB hold
# data, counting on its serial port). Prints per pair and as medians:
# snapshot time, revert time, the revert's resume latency (from the
# command to the reverted guest's first serial line, watched while the
# command runs: a count at most two past the last whole one printed before
# the revert (one past, or two when the snapshot cut a line), or the `guest: vmgenid` line a guest prints when its generation
# ID changed, which only the reverted guest can print and QEMU's guest,
# with no vmgenid device, never does; watched by a real-time process,
# which prints its own wait for a CPU; the guest prints a line every
# --every steps, 100 by default; the steps take microseconds, a line its
# serial bytes (one exit each, about 30 us nested: 0.6 ms a count line,
# 1.6 ms a vmgenid line) and the guest's disk write and flush, so a finer
# --every would not resolve more), and the
# VM-state bytes in the image; then the ratios ours/QEMU of the
# medians, measured in this run.
# Runs alternate ours and QEMU's; each snapshot is followed by `sync` and
# preceded by an untimed one (without it the first snapshot's `sync` wrote
# back what the start, the fill and other processes had left dirty: 0.3-0.45
# s, charged to whichever side came first).
# Then the VMM's log lines of each snapshot's and each revert's phases
# (and the revert's page faults: major ones read code or data from
# storage); each of our reverts also prints the `vm` command's own phases
# and figures (`vm: snapshot-revert: ...`: from the spawn to its start
# and end, its CPU time and its wait for a CPU, its page faults and
# blocks read) before its run's line. Before QEMU's turn the script waits
# (untimed) until our lazy RAM loader has filled the reverted guest's RAM,
# so that QEMU's snapshot and revert do not share the cores with it.
#
# --other-vm paused|running: whether the side not being measured is
# paused (the default: HMP `stop`/`cont`, `vm suspend`/`vm resume`,
# untimed, the same for both sides) or keeps its guest spinning a vCPU
# through the other side's snapshot and revert. A host runs one such VM
# at a time; with both spinning, each side's measurement races the other
# side's vCPU for this host's two cores. Session 15, load 2.2-3.5, the
# watcher as now, under 20 ms: paused 20 of 20 runs (9.6-18.1 ms, the
# resumed vCPU waiting 2-29 ms for a CPU in its first 100 ms), running 14
# of 15 (9.5-24.8 ms, 5-47 ms); but QEMU's loadvm is slower with ours
# paused, 187-1229 ms (medians 316-484) against 165-235 ms (medians
# 184-206): this nested host is slow to wake an idle core (session 13 saw
# the same). Both ways are printed in the README. The last line gives
# the load average and the steal time over the run.
# When bench/migrate.sh exists it runs last, with its defaults: an idle
# counting guest (--rate 0) migrated over a Unix socket, both sides'
# downtime measured over QEMU's span (from the source's pause to the
# last of the state sent, on the source: see bench/migrate.sh), ours
# also to the guest resumed at the destination, with both sides' phase
# logs.
#
# qemu-system-x86 10 comes from bookworm-backports (bench/vmm.sh
# --install-qemu installs it).
#
# --no-migrate leaves bench/migrate.sh out.
#
# Usage: bench/state.sh [--runs 5] [--memory 512] [--fill 256] [--every 100] [--no-migrate]
#                       [--other-vm paused|running]

set -euo pipefail
runs=5
memory=512
fill=256
every=100
migrate=1
other_vm=paused
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --fill) fill=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --no-migrate) migrate=0; shift ;;
        --other-vm) other_vm=$2; shift 2 ;;
        -h | --help) sed -n '2,60p' "$0"; exit 0 ;;
        *) echo "state.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
case $other_vm in
    running | paused) ;;
    *) echo "state.sh: --other-vm is running or paused, not '$other_vm'" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v qemu-system-x86_64 >/dev/null || {
    echo "state.sh: needs qemu-system-x86_64 (bench/vmm.sh --install-qemu)" >&2
    exit 1
}
cargo build -q --release -p vmm -p tools
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
bin=$target/release
work=$(mktemp -d "${TMPDIR:-/var/tmp}/state-bench.XXXXXX")
cleanup() {
    [ -n "${qemu_pid:-}" ] && kill "$qemu_pid" 2>/dev/null || true
    "$bin/vm" -c "$work/store" destroy bench >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cmdline="guest.mode=count guest.every=$every guest.fill=$fill"

# Ours: a domain on a qcow2 disk.
"$bin/img" create -q -f qcow2 "$work/ours.qcow2" 64M
cat >"$work/bench.xml" <<EOF
<domain type='kvm'>
  <name>bench</name>
  <memory unit='MiB'>$memory</memory>
  <os><type>hvm</type><kernel>$guest</kernel><cmdline>$cmdline</cmdline></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/ours.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
  </devices>
</domain>
EOF
"$bin/vm" -c "$work/store" -q define "$work/bench.xml"
"$bin/vm" -c "$work/store" -q start bench
ours_log=$work/store/run/bench/console.log

# QEMU: the same guest on its own qcow2 disk, HMP on a unix socket.
qemu-img create -q -f qcow2 "$work/qemu.qcow2" 64M
qemu_log=$work/qemu-serial.log
qemu-system-x86_64 -M microvm -accel kvm -bios /usr/share/qemu/qboot.rom -m "$memory" \
    -nodefaults -no-user-config -display none \
    -kernel "$guest" -append "$cmdline" -serial "file:$qemu_log" \
    -drive "file=$work/qemu.qcow2,if=none,id=d0,format=qcow2" \
    -device virtio-blk-device,drive=d0 \
    -monitor "unix:$work/monitor.sock,server,nowait" &
qemu_pid=$!

python3 - "$runs" "$bin/vm" "$work" "$ours_log" "$qemu_log" "$work/monitor.sock" "$fill" "$other_vm" <<'EOF'
import json, os, socket, statistics, subprocess, sys, time
runs, vm, work, ours_log, qemu_log, monitor, fill, other_vm = sys.argv[1:]
runs = int(runs)
pause_other = other_vm == "paused"
# Filling takes about 0.6 s per MiB on a nested host (each first touch of a
# page is a nested EPT fault).
fill_timeout = 60 + 2 * int(fill)
store = os.path.join(work, "store")

def wait_for(path, text, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if text in open(path, errors="replace").read():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    sys.exit(f"state.sh: '{text}' never appeared in {path}")

def counts_after(path, size):
    """The counts the guest printed in `path` past byte `size`, in whole
    lines (one being written is left for the next look)."""
    with open(path, "rb") as f:
        f.seek(size)
        text = f.read().decode(errors="replace")
    lines = [line.strip() for line in text.split("\n")[:-1]]
    return [int(line.split()[2]) for line in lines
            if line.startswith("guest: count ") and len(line.split()) == 3
            and line.split()[2].isdigit()]

def last_count(path):
    seen = counts_after(path, 0)
    if not seen:
        sys.exit(f"state.sh: no count line in {path}")
    return seen[-1]

def wait_count_past(path, count, timeout=60):
    """Waits until the guest printed a count above `count`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if last_count(path) > count:
            return
        time.sleep(0.005)
    sys.exit(f"state.sh: the count in {path} stays at {count} or below")

def new_generation_after(path, size):
    """Whether `path` holds, past byte `size`, a whole `guest: vmgenid`
    line: the guest prints one only when the generation ID changed, which
    only a revert does (so only the reverted guest prints it; QEMU's
    guest, with no vmgenid device, never does)."""
    with open(path, "rb") as f:
        f.seek(size)
        text = f.read().decode(errors="replace")
    return any(line.strip().startswith("guest: vmgenid ") for line in text.split("\n")[:-1])

def reverted_line_after(path, size, at_most, start, timeout=60):
    """Seconds from `start` until `path` grows past `size` with a line of
    the reverted guest: a count of at most `at_most` (the guest it
    replaced was made to print past that first) or its new generation
    ID, whichever it prints first. Each look reads only what is new since
    the last (the watcher runs real-time: a look that reread everything
    past `size` grew with the log, and a watcher that never saw its line
    spun a core for minutes), and gives up after `timeout` seconds."""
    end = time.monotonic() + timeout
    pos, partial = size, b""
    f = open(path, "rb")
    while time.monotonic() < end:
        f.seek(pos)
        new = f.read()
        pos += len(new)
        *lines, partial = (partial + new).split(b"\n")
        for line in (line.decode(errors="replace").strip() for line in lines):
            fields = line.split()
            if line.startswith("guest: vmgenid ") or (
                    line.startswith("guest: count ") and len(fields) == 3
                    and fields[2].isdigit() and int(fields[2]) <= at_most):
                return time.monotonic() - start
        time.sleep(0.0005)
    f.close()
    # Keep the logs for a look after the bench has removed its directory.
    keep = f"/var/tmp/state-miss-{os.getpid()}"
    subprocess.run(["sh", "-c", f"mkdir -p {keep} && find {work} -name '*.log' -exec cp --parents {{}} {keep} ';'"])
    print(f"state.sh: the logs are kept in {keep}", flush=True)
    since = counts_after(path, size)
    print(f"state.sh: no count line of at most {at_most} from the reverted guest in {path} "
          f"within {time.monotonic() - start:.1f} s (counts printed since: {since[:3]} ... "
          f"{since[-3:]}; the log has {os.path.getsize(path)} bytes, watched from {size})",
          flush=True)
    return None

def thread_wait_ns():
    """The calling thread's time runnable but waiting for a CPU (ns)."""
    try:
        return int(open("/proc/thread-self/schedstat").read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0

def timed_revert(path, revert):
    """Runs `revert()` while watching `path`: (the revert's seconds, the
    seconds from its start to the reverted guest's first count line).
    The snapshot was taken at or before the last whole count line printed
    now (L), or inside the line after it: the guest prints byte by byte,
    a snapshot can cut a line, and the reverted guest then first finishes
    it (bytes that begin no line of their own) and prints L + 2 as its
    first whole count line. So the reverted guest's first line says at
    most L + 2; the guest is first let to print past L + 3, and the log is
    watched while the command runs (the guest may run before the command
    returns). (Watching for L + 1 only missed that case: once in about a
    hundred reverts, on either side, the watcher waited for ever.)"""
    at_snapshot = last_count(path)
    wait_count_past(path, at_snapshot + 3)
    size = os.path.getsize(path)
    # The watcher is a process of its own, real-time (SCHED_FIFO 1), or at
    # nice -10 where it may not be; the command, spawned from this one,
    # keeps nice 0, as the HMP client does. It measures: on this 2-core
    # host with other sessions' work, a watcher thread at nice -10 waited
    # 1.4-5.0 ms for a CPU while watching our revert (with autogroups a
    # nice value counts only within its own session), and a real-time
    # watcher thread once waited 134 ms for Python's lock, held by this
    # thread while it waited for a CPU. It reports when it saw the line
    # (CLOCK_MONOTONIC) and its own wait for a CPU.
    ready_r, ready_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(result_r)
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, -10)
            except OSError:
                pass
        waited = thread_wait_ns()
        os.write(ready_w, b"r")
        seen_at = reverted_line_after(path, size, at_snapshot + 2, 0.0)
        os.write(result_w, json.dumps([seen_at, (thread_wait_ns() - waited) / 1e6]).encode())
        os._exit(0)
    os.close(ready_w)
    os.close(result_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    t = time.monotonic()
    revert()
    took = time.monotonic() - t
    data = b""
    while chunk := os.read(result_r, 4096):
        data += chunk
    os.close(result_r)
    os.waitpid(pid, 0)
    seen_at, waited = json.loads(data) if data else (None, 0.0)
    watcher_waits.append(waited)
    if seen_at is None:
        sys.exit(f"state.sh: no count line of the reverted guest in {path}")
    return took, seen_at - t

# The watcher's own waits for a CPU while it watched, one per revert: what
# the measurement itself added to a resume latency.
watcher_waits = []

class Hmp:
    def __init__(self, path):
        for _ in range(500):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.02)
        self.read_prompt()
    def read_prompt(self):
        data = b""
        while not data.endswith(b"(qemu) "):
            chunk = self.s.recv(65536)
            if not chunk:
                sys.exit("state.sh: QEMU's monitor closed")
            data += chunk
        return data.decode(errors="replace")
    def cmd(self, text):
        self.s.sendall(text.encode() + b"\n")
        out = self.read_prompt()
        if "Error" in out or "error" in out:
            sys.exit(f"state.sh: QEMU: {text}: {out.strip()}")
        return out

def vm_run(*args, phases=False):
    # With phases, `vm` prints its own phase line on stderr (VM_PHASES=1),
    # timed from this spawn.
    env = None
    if phases:
        env = dict(os.environ, VM_PHASES="1", VM_PHASES_SPAWNED_NS=str(time.monotonic_ns()))
    subprocess.run([vm, "-c", store, "-q", *args], check=True, stdout=subprocess.DEVNULL, env=env)

def loader_done(name, timeout=30):
    """Waits until our VMM logged that its lazy RAM loader filled the RAM
    of snapshot `name` (none is logged with VMM_EAGER_RAM=1: then it
    waits `timeout`)."""
    log = os.path.join(store, "run", "bench", "vmm.log")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if f"vmm: lazy RAM of snapshot '{name}'" in open(log, errors="replace").read():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)

def cpu_times():
    """(all, steal) jiffies from /proc/stat's cpu line."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields[:8]), fields[7]

def vm_state_bytes(image, name):
    info = json.loads(subprocess.run(["qemu-img", "info", "--force-share", "--output=json", image],
                                     check=True, capture_output=True).stdout)
    for s in info.get("snapshots", []):
        if s["name"] == name:
            return s["vm-state-size"]
    sys.exit(f"state.sh: no snapshot {name} in {image}")

wait_for(ours_log, "guest: filled", fill_timeout)
wait_for(qemu_log, "guest: filled", fill_timeout)
hmp = Hmp(monitor)
load_start = open("/proc/loadavg").read().split()[0]
cpu_start = cpu_times()
rows = {"ours": [], "qemu": []}
for i in range(runs):
    # Ours.
    if pause_other:
        hmp.cmd("stop")
    subprocess.run(["sync"])
    t = time.monotonic(); vm_run("snapshot-create-as", "bench", f"s{i}")
    subprocess.run(["sync"]); save = time.monotonic() - t
    revert, resume = timed_revert(ours_log, lambda: vm_run("snapshot-revert", "bench", f"s{i}", phases=True))
    rows["ours"].append((save, revert, resume, vm_state_bytes(os.path.join(work, "ours.qcow2"), f"s{i}")))
    loader_done(f"s{i}")
    if pause_other:
        hmp.cmd("cont")
        vm_run("suspend", "bench")
    # QEMU's.
    subprocess.run(["sync"])
    t = time.monotonic(); hmp.cmd(f"savevm q{i}")
    subprocess.run(["sync"]); save = time.monotonic() - t
    revert, resume = timed_revert(qemu_log, lambda: hmp.cmd(f"loadvm q{i}"))
    rows["qemu"].append((save, revert, resume, vm_state_bytes(os.path.join(work, "qemu.qcow2"), f"q{i}")))
    if pause_other:
        vm_run("resume", "bench")
    for who, waited in zip(("ours", "qemu"), watcher_waits[-2:]):
        s, r, l, b = rows[who][-1]
        print(f"run {i + 1} {who:4}: snapshot {s * 1000:7.1f} ms  revert {r * 1000:7.1f} ms  "
              f"resume latency {l * 1000:7.1f} ms  VM state {b / 2**20:7.1f} MiB  "
              f"(watcher waited {waited:.1f} ms for a CPU)")
    sys.stdout.flush()
med = {who: [statistics.median(col) for col in zip(*rows[who])] for who in rows}
names = ["snapshot ms", "revert ms", "resume latency ms", "VM state MiB"]
scale = [1000, 1000, 1000, 1 / 2**20]
print(f"\nmedians over {runs} runs, {fill} MiB of guest data:")
for k, name in enumerate(names):
    o, q = med["ours"][k] * scale[k], med["qemu"][k] * scale[k]
    print(f"  {name:18} ours {o:9.1f}   qemu {q:9.1f}   ratio ours/qemu {o / q if q else float('nan'):.3f}")
# QEMU's first savevm of a run writes its state into fresh clusters; its
# later ones are slower (they copy the previous state's clusters on write).
o, q = rows["ours"][0][0] * 1000, rows["qemu"][0][0] * 1000
print(f"  first snapshot     ours {o:9.1f}   qemu {q:9.1f}   ratio ours/qemu {o / q:.3f}")
under = sum(1 for r in rows["ours"] if r[2] < 0.020)
print(f"  our resume latency under 20 ms in {under} of {runs} runs")
cpu_end = cpu_times()
steal = (cpu_end[1] - cpu_start[1]) / max(1, cpu_end[0] - cpu_start[0]) * 100
print(f"  the other VM {other_vm} while one is measured; load average "
      f"{load_start} at the start, {open('/proc/loadavg').read().split()[0]} at the end; "
      f"steal {steal:.1f}% of the CPU time")
EOF
kill "$qemu_pid" 2>/dev/null || true
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
# Where our snapshots' and reverts' time went (the VMM logs each one's
# phases, and the lazy RAM loader its first faults).
grep -h "vmm: snapshot\|vmm: revert\|vmm: lazy RAM" "$work/store/run/bench/vmm.log" 2>/dev/null || true

if ((migrate)) && [ -f bench/migrate.sh ]; then
    echo
    bash bench/migrate.sh
fi
