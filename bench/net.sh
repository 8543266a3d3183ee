#!/usr/bin/env bash
# Benchmark the virtio-net device (not a test): the test guest
# (guest.mode=net: UDP echo on port 7, discard on 9, source on 19) behind
# our `vmm --net tap=...` and behind QEMU 10's `-M microvm -enable-kvm
# -device virtio-net-device` on a tap (modern virtio-mmio, no vhost: this
# kernel has none), alternating ours and theirs over --pairs pairs, each
# in a fresh network namespace. Measured from the host through the tap:
#   host->guest  UDP datagrams of 1400 bytes blasted at the discard port
#                for --seconds; what the guest counted, per second
#   guest->host  the guest's source port sends --count datagrams of 1400
#                bytes; what arrived, per second
#   round trip   median of 200 echoes of a 64-byte datagram
# Prints each pair and the median ratios ours/QEMU (throughput: higher is
# better; round trip: lower is better).
#
# --exits: also count, with perf's KVM tracepoints on each VMM's process,
# per frame the guest took in the host->guest phase and per round trip:
# the guest's exits to the VMM (kvm_userspace_exit), its MMIO accesses
# (kvm_mmio reads: InterruptStatus; writes: InterruptACK, QueueNotify), the
# virtio interrupts it took (kvm_eoi of vector 0x30; the guest's 100 Hz
# timer is left out) and the guest instructions KVM emulated
# (kvm_emulate_insn; this host's KVM emulates ring-0 code, so that is
# the guest's work). These do not swing with the machine's load as times
# do. Needs perf.
#
# Usage: bench/net.sh [--pairs 3] [--seconds 3] [--count 2000] [--exits]

set -euo pipefail
pairs=3
seconds=3
count=2000
exits=0
while (($#)); do
    case $1 in
        --pairs) pairs=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --exits) exits=1; shift ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "net.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [ "$(id -u)" != 0 ]; then
    echo "net.sh: needs root (network namespaces, taps)" >&2
    exit 1
fi
if [ "$exits" = 1 ] && ! command -v perf >/dev/null; then
    echo "net.sh: --exits needs perf (apt-get install linux-perf)" >&2
    exit 1
fi
command -v qemu-system-x86_64 >/dev/null || {
    echo "net.sh: qemu-system-x86_64 missing (bench/vmm.sh --install-qemu)" >&2
    exit 1
}
bash scripts/ensure-net.sh
# NET_BENCH_VMM=path runs that vmm binary instead (e.g. an older build,
# for before and after figures).
[ -n "${NET_BENCH_VMM:-}" ] || cargo build -q --release -p vmm
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
vmm=${NET_BENCH_VMM:-$target/release/vmm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run in a fresh namespace: $1 = ours|qemu; prints "h2g_MBps g2h_MBps
# rtt_us", then with --exits the counts per host->guest frame and per
# round trip.
cat >"$work/one.sh" <<'EOF'
set -euo pipefail
which=$1 guest=$2 vmm=$3 seconds=$4 count=$5 work=$6 exits=$7
ip link set lo up
ip tuntap add dev bt0 mode tap vnet_hdr
ip link set bt0 addrgenmode none
ip addr add 10.96.0.1/24 dev bt0
ip link set bt0 up
cmdline="console=ttyS0 guest.mode=net guest.ip=10.96.0.2"
log=$work/$which.log
if [ "$which" = ours ]; then
    "$vmm" --kernel "$guest" --memory 128M --cmdline "$cmdline" \
        --net tap=bt0,mac=52:54:00:12:34:56 </dev/null >"$log" 2>&1 &
else
    qemu-system-x86_64 -M microvm,pit=off,pic=off,rtc=off,ioapic2=off,acpi=off -accel kvm \
        -bios /usr/share/qemu/qboot.rom -nodefaults -no-user-config -nographic \
        -global virtio-mmio.force-legacy=false -serial stdio -m 128M -no-reboot \
        -netdev tap,id=n0,ifname=bt0,script=no,downscript=no,vhost=off \
        -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56 \
        -kernel "$guest" -append "$cmdline" </dev/null >"$log" 2>&1 &
fi
pid=$!
for _ in $(seq 300); do
    grep -q "guest: net ready" "$log" 2>/dev/null && break
    sleep 0.05
done
grep -q "guest: net ready" "$log" || { echo "no guest on $which: $(cat "$log")" >&2; kill -9 $pid; exit 1; }
python3 - "$seconds" "$count" "$exits" "$pid" "$work/$which" <<'PY'
import signal, socket, statistics, struct, subprocess, sys, time
seconds, count = float(sys.argv[1]), int(sys.argv[2])
exits, pid, prefix = sys.argv[3] == "1", sys.argv[4], sys.argv[5]
guest = "10.96.0.2"
# (tracepoint, filter): the test guest's virtio interrupts are vector 0x30
# (its timer, 0x31 at 100 Hz, is left out: per frame it would depend on
# the rate).
EVENTS = [("kvm:kvm_userspace_exit", None), ("kvm:kvm_mmio", "type == 1"),
          ("kvm:kvm_mmio", "type == 2"),
          ("kvm:kvm_eoi", "vector == 48"), ("kvm:kvm_emulate_insn", None)]
def perf_start(phase):
    if not exits:
        return None
    out = "%s.%s.perf" % (prefix, phase)
    args = ["perf", "stat", "-x", ",", "-o", out, "-p", pid]
    for event, filt in EVENTS:
        args += ["-e", event] + (["--filter", filt] if filt else [])
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches to every thread
    return (p, out)
def perf_stop(run, per):
    if run is None:
        return []
    p, out = run
    p.send_signal(signal.SIGINT)
    p.wait()
    names = [event for event, _ in EVENTS]
    counts = []  # in the order given (kvm_eoi's filter is not printed)
    for line in open(out):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[2] in names:
            counts.append(int(fields[0]) if fields[0].isdigit() else 0)
    counts += [0] * (len(names) - len(counts))
    return ["%.2f" % (c / per if per else 0) for c in counts]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.96.0.1", 0))
s.settimeout(2)
# Round trip first (the ARP entry is made by the first echo).
rtts = []
for i in range(10):
    s.sendto(b"x" * 64, (guest, 7))
    s.recvfrom(2048)
rtt_perf = perf_start("rtt")
for i in range(200):
    t = time.perf_counter()
    s.sendto(b"x" * 64, (guest, 7))
    s.recvfrom(2048)
    rtts.append(time.perf_counter() - t)
rtt_counts = perf_stop(rtt_perf, len(rtts))
h2g_perf = perf_start("h2g")
# Host to guest: blast the discard port, then ask what it counted.
payload = b"d" * 1400
end = time.perf_counter() + seconds
start = time.perf_counter()
while time.perf_counter() < end:
    try:
        s.sendto(payload, (guest, 9))
    except OSError:
        pass  # a full tap queue: the kernel's ENOBUFS
def discarded():
    for _ in range(5):
        s.sendto(b"count", (guest, 9))
        try:
            data, _ = s.recvfrom(2048)
            if len(data) == 16:
                return struct.unpack("<QQ", data)
        except socket.timeout:
            pass
    return None
# The guest drains what the tap queued: its count stops growing; the
# time is until the count that first stood still.
counted, last_change = discarded(), time.perf_counter()
for _ in range(100):
    time.sleep(0.1)
    again = discarded()
    if again == counted:
        break
    counted, last_change = again, time.perf_counter()
elapsed = last_change - start
h2g = counted[1] / elapsed / 1e6 if counted else 0.0
h2g_counts = perf_stop(h2g_perf, counted[0] if counted else 0)
# Guest to host: ask the source port for `count` datagrams.
s.settimeout(1)
s.sendto(struct.pack("<I", count), (guest, 19))
datagrams = got = 0
first = last = None
while datagrams < count:
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        break
    if len(data) != 1400:
        continue  # a late answer to a count query
    now = time.perf_counter()
    if first is None:
        first = now  # the clock starts at the first datagram: not counted
    else:
        got += len(data)
    last = now
    datagrams += 1
g2h = got / (last - first) / 1e6 if first and last and last > first else 0.0
s.sendto(b"reset", (guest, 9))
print(" ".join(["%.3f %.3f %.1f" % (h2g, g2h, statistics.median(rtts) * 1e6)]
               + h2g_counts + rtt_counts))
PY
sleep 0.3
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
EOF

run() {
    unshare -n bash "$work/one.sh" "$1" "$guest" "$vmm" "$seconds" "$count" "$work" "$exits"
}

# One untimed run each first (page cache, CPU frequency).
run ours >/dev/null
run qemu >/dev/null
results=()
for pair in $(seq "$pairs"); do
    read -r oh og ort oexits < <(run ours)
    read -r qh qg qrt qexits < <(run qemu)
    printf 'pair %d: ours h2g %7.3f MB/s g2h %7.3f MB/s rtt %8.1f us | qemu h2g %7.3f MB/s g2h %7.3f MB/s rtt %8.1f us\n' \
        "$pair" "$oh" "$og" "$ort" "$qh" "$qg" "$qrt"
    if [ "$exits" = 1 ]; then
        for side in ours qemu; do
            [ $side = ours ] && counts=$oexits || counts=$qexits
            read -r a b c d e f g h i j <<<"$counts"
            printf '  %s: per h2g frame: exits %s mmio reads %s writes %s irqs %s insns %s | per round trip: exits %s mmio reads %s writes %s irqs %s insns %s\n' \
                "$side" "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
        done
    fi
    results+=("$oh $og $ort $qh $qg $qrt")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
def ratio(a, b):
    pairs = [r[a] / r[b] for r in rows if r[a] and r[b]]
    return statistics.median(pairs) if pairs else float("nan")
print("median ratios ours/qemu: host->guest %.2f, guest->host %.2f, round trip %.2f" %
      (ratio(0, 3), ratio(1, 4), ratio(2, 5)))
print("targets: throughput >= 1.2 each way, round trip <= 0.8")
'
