#!/usr/bin/env bash
# Benchmark live migration over a Unix socket on this host (not a test):
# our `vmm` (vm.receive-migration / vm.send-migration through its API
# socket, figures from the source's closing line) against QEMU 10
# (`qemu-system-x86_64 -M microvm -enable-kvm` with `-incoming unix:`,
# then HMP `migrate` and `info migrate`'s "total time" and "downtime"),
# both running the same test guest in `guest.mode=count` (counting in RAM,
# writing each count to its disk with a flush) with --memory of RAM and a
# raw disk. Runs alternate ours and QEMU's; prints medians and the
# ratios ours/QEMU.
#
# Downtime is measured over the same span on both sides. QEMU's "downtime"
# (migration/migration.c) is taken on the source: from
# migration_stop_vm() (just before vm_stop: the vCPUs stopped, the block
# layer drained and flushed) to migration_completion_end() (the last
# pass, the device state and the disks' inactivation written, and the
# stream flushed into the socket); it does not wait for the destination
# to load the state or run the guest. `info migrate` gives it in whole
# milliseconds (qemu_clock_get_ms at both ends: its "1 ms" is any span
# under 2 ms), so the script also reads it in microseconds from QEMU's
# trace points at the same two places: the source runs with `-trace
# enable=vmstate_downtime_checkpoint,file=...` and `-msg timestamp=on`
# (Debian's build has the log backend, which stamps each line with
# gettimeofday's microseconds), and its span is "src-downtime-start"
# (the line just before migration_stop_vm reads the clock) to
# "src-downtime-end" (just after migration_downtime_end reads it); the
# lines between ("src-vm-stopped", "src-iterable-saved",
# "src-non-iterable-saved") are printed as QEMU's phases, with its
# vCPUs' stop within "vm-stopped" (its `vm_state_notify` trace point,
# just after pause_all_vcpus() returns). Each line is one write(2) of a
# line to the trace file on /dev/shm (about 1.3 µs here), five of them
# inside the span: some 6.5 µs of a span of 0.9 ms or more. `info migrate`'s figures with the tracing and without it
# (--qemu-trace off) differ by no more than the host's load moves them
# (see README). The ratios
# use the microsecond span; `info migrate`'s figure is printed beside it.
# Ours by that measure is our source's "to the state sent" figure: from
# just before the pause (vCPUs out, disk queues drained) to the Switch
# frame flushed into the socket, after the last pass, the machine's
# state, the disks' flush and the release of their locks. Ours also
# shows the span QEMU does not report:
# from the pause to the guest resumed at the destination (its Resumed
# heard by the source), and the destination's own phase log
# (VMM_MIGRATION_PHASES=1: the switch read, the VM's build, the wait for
# the Commit, the resume). The counting guest touches a few pages continuously
# (its counter, its stack, the disk buffers): that measures the full pass
# over mostly-zero RAM and the switch (--rate 0, the default: an idle
# guest but for its counter and its disk writes).
#
# The pause's tail (session 13): with VMM_PAUSE_TRACE=1 in the
# environment our VMMs log each pause's kicks and each vCPU's leaving exit
# (when, whether on the kick, its RIP and privilege level, and the vCPU
# threads' time on a CPU and waiting for one from schedstat); this script
# prints the summary lines. Over 300 pauses through the API (no real-time
# boost, load 4 on the 2 cores) 24 took over 0.5 ms, up to 13 ms: in each
# the vCPU thread had been waiting for a CPU for the whole tail (mostly
# one 4 ms scheduler tick) and had not run; once on a CPU it left at the
# kick already pending. The guest was in its ring-0 count loop in fast and
# slow pauses alike, and no pause showed a vCPU on a CPU ignoring its kick:
# the nested host's ring-0 emulation is not the tail, so the test guest's
# loops stay in ring 0. The window's threads (vCPUs among them) are
# therefore raised to the real-time class before the disks' flush that
# precedes the pause, not just before the pause (raised there, a vCPU
# still waited 0.16-0.18 ms for a CPU in 3 of 40 migrations). QEMU's vCPU
# threads are not raised; its own vCPU stop is printed (see above).
#
# --rate MIB runs the guest in `guest.mode=dirty` instead: it dirties MIB
# MiB/s of a --span MIB buffer (default 16) on every 10 ms timer tick,
# which measures convergence under load (both sides keep their default
# 300 ms downtime target).
#
# --ours-only runs our side only (no QEMU, no ratios): a loop of
# migrations whose phase logs show where slow runs differ from fast ones.
#
# --vmm PATH uses that vmm binary instead of building the release one
# (e.g. target/debug/vmm, which the test profile builds at opt-level 2).
#
# --qemu-trace off runs QEMU without its trace points: the ratios then
# use `info migrate`'s whole milliseconds.
#
# Usage: bench/migrate.sh [--runs 5] [--memory 512M] [--vmm PATH]
#                         [--rate MIB [--span MIB]] [--ours-only]
#                         [--qemu-trace on|off]

set -euo pipefail
runs=5
memory=512M
vmm=
rate=0
span=16
ours_only=0
qemu_trace=on
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --vmm) vmm=$(realpath "$2"); shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --span) span=$2; shift 2 ;;
        --ours-only) ours_only=1; shift ;;
        --qemu-trace) qemu_trace=$2; shift 2 ;;
        -h | --help) sed -n '2,/^$/p' "$0"; exit 0 ;;
        *) echo "migrate.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
if [ -z "$vmm" ]; then
    cargo build -q --release -p vmm
    vmm=$target/release/vmm
fi
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
[ "$ours_only" = 1 ] || command -v qemu-system-x86_64 >/dev/null || {
    echo "qemu-system-x86_64 not installed (bench/vmm.sh --install-qemu installs it)" >&2
    exit 1
}
case $qemu_trace in on | off) ;; *) echo "migrate.sh: --qemu-trace on or off, not '$qemu_trace'" >&2; exit 2 ;; esac
work=$(mktemp -d)
# QEMU's trace file on tmpfs: its writes are inside QEMU's window.
trace_dir=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$work" "$trace_dir"' EXIT

python3 - "$runs" "$memory" "$vmm" "$guest" "$work" "$rate" "$span" "$ours_only" "$qemu_trace" "$trace_dir" <<'PY'
import json, os, re, socket, statistics, subprocess, sys, time

runs, memory, vmm, guest, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rate, span, ours_only = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8] == "1"
qemu_trace, trace_dir = sys.argv[9] == "on", sys.argv[10]
mib = int(memory[:-1]) * (1024 if memory.endswith("G") else 1) if memory[-1] in "MG" else int(memory) >> 20
if rate:
    cmdline = f"guest.mode=dirty guest.rate={rate} guest.span={span}"
    ready, mode = "guest: dirty 2", f"guest.mode=dirty at {rate} MiB/s over {span} MiB"
else:
    cmdline = "guest.mode=count guest.every=20000"
    ready, mode = "guest: count 2", "guest.mode=count"

def wait_for(path, what, timeout=10):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - t0 > timeout:
            sys.exit(f"migrate.sh: no {what} after {timeout} s")
        time.sleep(0.005)

def wait_text(path, text, timeout=60):
    t0 = time.monotonic()
    while True:
        try:
            if text in open(path, errors="replace").read():
                return
        except FileNotFoundError:
            pass
        if time.monotonic() - t0 > timeout:
            sys.exit(f"migrate.sh: no '{text}' in {path} after {timeout} s")
        time.sleep(0.01)

def curl(sock, path, body=None, background=False):
    cmd = ["curl", "-sS", "--fail-with-body", "--unix-socket", sock, "-X", "PUT" if body is not None else "GET",
           f"http://localhost/api/v1/{path}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"migrate.sh: {path}: {out.stdout}{out.stderr}")
    return out.stdout

def ours(run):
    d = os.path.join(work, f"ours{run}")
    os.makedirs(d)
    disk = os.path.join(d, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    procs = []
    for side in ("src", "dst"):
        log = open(os.path.join(d, f"{side}.log"), "w")
        env = dict(os.environ, VMM_MIGRATION_PHASES="1")
        procs.append(subprocess.Popen([vmm, "--api-socket", f"path={d}/{side}.sock"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env))
        wait_for(f"{d}/{side}.sock", f"{side} API socket")
    config = {"payload": {"kernel": guest, "cmdline": cmdline}, "memory": {"size": mib << 20},
              "disks": [{"path": disk, "id": "vda", "image_type": "Raw"}],
              "serial": {"mode": "File", "file": f"{d}/src-console.log"}}
    curl(f"{d}/src.sock", "vm.create", config)
    curl(f"{d}/src.sock", "vm.boot", {})
    wait_text(f"{d}/src-console.log", ready, timeout=600)
    recv = curl(f"{d}/dst.sock", "vm.receive-migration",
                {"receiver_url": f"unix:{d}/mig.sock",
                 "serial": {"mode": "File", "file": f"{d}/dst-console.log"}}, background=True)
    wait_for(f"{d}/mig.sock", "migration listener")
    curl(f"{d}/src.sock", "vm.send-migration", {"destination_url": f"unix:{d}/mig.sock"})
    recv.wait()
    procs[0].wait(timeout=30)
    line = open(os.path.join(d, "src.log")).read()
    m = re.search(r"migrated to \S+ in (\d+) ms \(([\d.]+) ms of downtime", line)
    if not m:
        sys.exit(f"migrate.sh: our source did not migrate: {line}")
    for l in line.strip().splitlines():
        if "migrated to" in l or "downtime:" in l or "pause trace: paused in" in l:
            print("  ours:", l, flush=True)
    try:
        curl(f"{d}/dst.sock", "vmm.shutdown", {})
    except SystemExit:
        pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    for l in open(os.path.join(d, "dst.log")).read().strip().splitlines():
        if "switch here" in l:
            print("  ours:", l, flush=True)
    sent = re.search(r"([\d.]+) ms to the state sent", line)
    if not sent:
        sys.exit(f"migrate.sh: our source did not report the state sent: {line}")
    resumed_ms.append(float(m.group(2)))
    return int(m.group(1)), float(sent.group(1))

def hmp(sock_path, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.settimeout(10)
    def until_prompt():
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace")
    until_prompt()
    s.sendall(command.encode() + b"\n")
    out = until_prompt()
    s.close()
    return out

def qemu(run):
    d = os.path.join(work, f"qemu{run}")
    os.makedirs(d)
    disk = os.path.join(d, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    base = ["qemu-system-x86_64", "-M", "microvm,pit=off,pic=off,rtc=off,ioapic2=off", "-accel", "kvm",
            "-bios", "/usr/share/qemu/qboot.rom", "-nodefaults", "-no-user-config", "-display", "none",
            "-m", memory, "-no-reboot",
            "-drive", f"file={disk},if=none,id=d0,format=raw,file.locking=off",
            "-device", "virtio-blk-device,drive=d0", "-kernel", guest, "-append", cmdline]
    procs = []
    trace = os.path.join(trace_dir, f"qemu{run}-src.trace")
    for side in ("src", "dst"):
        extra = ["-serial", f"file:{d}/{side}-console.log",
                 "-monitor", f"unix:{d}/{side}-mon.sock,server=on,wait=off"]
        if side == "dst":
            extra += ["-incoming", f"unix:{d}/mig.sock"]
        elif qemu_trace:
            extra += ["-trace", f"enable=vmstate_downtime_checkpoint,file={trace}",
                      "-trace", f"enable=vm_state_notify,file={trace}", "-msg", "timestamp=on"]
        log = open(os.path.join(d, f"{side}.log"), "w")
        procs.append(subprocess.Popen(base + extra, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        wait_for(f"{d}/{side}-mon.sock", f"QEMU {side} monitor")
    wait_text(f"{d}/src-console.log", ready, timeout=600)
    wait_for(f"{d}/mig.sock", "QEMU migration listener")
    hmp(f"{d}/src-mon.sock", f"migrate unix:{d}/mig.sock")
    t0 = time.monotonic()
    while True:
        info = hmp(f"{d}/src-mon.sock", "info migrate")
        if "completed" in info:
            break
        if "failed" in info or time.monotonic() - t0 > 120:
            sys.exit(f"migrate.sh: QEMU's migration: {info}")
        time.sleep(0.05)
    total = int(re.search(r"[Tt]otal time:\s*(\d+) ms", info).group(1))
    down = int(re.search(r"[Dd]owntime:\s*(\d+) ms", info).group(1))
    down_us = None
    if qemu_trace:
        down_us = qemu_trace_span(trace)
    for p in procs:
        p.kill()
        p.wait()
    print(f"  qemu: downtime {down} ms (info migrate)"
          + (f", {down_us / 1000:.3f} ms traced" if down_us is not None else ""), flush=True)
    return total, down, down_us

def qemu_trace_span(trace):
    """QEMU's source downtime in microseconds, from its trace points
    src-downtime-start to src-downtime-end; prints the phases between."""
    points = []
    t0 = time.monotonic()
    while True:
        try:
            text = open(trace, errors="replace").read()
        except FileNotFoundError:
            text = ""
        points = re.findall(r"^\d+@(\d+)\.(\d{6}):vmstate_downtime_checkpoint (\S+)$", text, re.M)
        names = [p[2] for p in points]
        if "src-downtime-end" in names or time.monotonic() - t0 > 5:
            break
        time.sleep(0.01)
    stamps = {name: int(sec) * 1_000_000 + int(usec) for sec, usec, name in points}
    if "src-downtime-start" not in stamps or "src-downtime-end" not in stamps:
        sys.exit(f"migrate.sh: QEMU's trace {trace} lacks src-downtime-start/end: {text!r}")
    start = stamps["src-downtime-start"]
    phases, last = [], start
    for _, _, name in points:
        if name.startswith("src-") and name != "src-downtime-start":
            phases.append(f"{name[4:]} {(stamps[name] - last) / 1000:.3f}")
            last = stamps[name]
    # vm_state_notify(running 0) comes just after pause_all_vcpus()
    # returns in do_vm_stop: QEMU's own time to take its vCPUs out.
    stops = [int(sec) * 1_000_000 + int(usec) for sec, usec in
             re.findall(r"^\d+@(\d+)\.(\d{6}):vm_state_notify running 0 ", text, re.M)]
    stops = [t for t in stops if t >= start]
    if stops:
        phases.append(f"(of vm-stopped, the vCPUs out {(stops[0] - start) / 1000:.3f})")
    print("  qemu: downtime phases (ms, each from the last):", ", ".join(phases), flush=True)
    return stamps["src-downtime-end"] - start

results = {"ours": [], "qemu": []}
resumed_ms = []
for run in range(runs):
    results["ours"].append(ours(run))
    if ours_only:
        print(f"run {run}: total {results['ours'][-1][0]} ms, downtime {results['ours'][-1][1]} ms", flush=True)
        continue
    results["qemu"].append(qemu(run))
if ours_only:
    downs = [r[1] for r in results["ours"]]
    print(f"vmm, {runs} runs: downtime (to the state sent) median {statistics.median(downs):.3f} ms, max {max(downs):.3f} ms, runs {downs}")
    print(f"vmm, from the pause to the guest resumed at the destination: median {statistics.median(resumed_ms):.1f} ms, runs {resumed_ms}")
    sys.exit(0)
def med(side, i):
    return statistics.median(r[i] for r in results[side])
o_total, o_down, q_total, q_ms = med("ours", 0), med("ours", 1), med("qemu", 0), med("qemu", 1)
# QEMU's downtime in ms: the traced microseconds, or info migrate's integer.
q_downs = [r[2] / 1000 if qemu_trace else r[1] for r in results["qemu"]]
q_down = statistics.median(q_downs)
o_downs = [r[1] for r in results["ours"]]
print(f"guest: {memory} of RAM, {mode}, unix socket, {runs} runs each (medians)")
print("downtime: from the pause to the last of the state sent, on the source (QEMU's span)")
print(f"vmm:          total {o_total:7.1f} ms   downtime {o_down:6.3f} ms   runs (total, downtime) {results['ours']}")
print(f"qemu microvm: total {q_total:7.1f} ms   downtime {q_down:6.3f} ms"
      + (" traced" if qemu_trace else " (info migrate)") + f"   runs (total, downtime) "
      + str([(r[0], round(q, 3)) for r, q in zip(results["qemu"], q_downs)]))
print(f"qemu microvm: info migrate's downtime (whole ms): median {q_ms} ms   runs {[r[1] for r in results['qemu']]}")
print(f"vmm, from the pause to the guest resumed at the destination: {statistics.median(resumed_ms):6.1f} ms   runs {resumed_ms}")
per_run = [o / max(q, 0.001) for o, q in zip(o_downs, q_downs)]
print(f"ratios ours/qemu: total {o_total / max(q_total, 1):.2f}, downtime {o_down / max(q_down, 0.001):.2f}"
      f" (per run {', '.join(f'{r:.2f}' for r in per_run)}; at most 0.5 in {sum(r <= 0.5 for r in per_run)} of {runs})")
print("targets: downtime at most 0.5x QEMU's and under 50 ms; total time at most QEMU's")
PY
