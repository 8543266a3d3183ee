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
# Needs root, /dev/kvm, /dev/net/tun, iproute2 and qemu-system-x86 10
# (bookworm-backports; bench/vmm.sh --install-qemu installs it).
#
# Usage: bench/net.sh [--pairs 3] [--seconds 3] [--count 2000]

set -euo pipefail
pairs=3
seconds=3
count=2000
while (($#)); do
    case $1 in
        --pairs) pairs=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "net.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [ "$(id -u)" != 0 ]; then
    echo "net.sh: needs root (network namespaces, taps)" >&2
    exit 1
fi
command -v qemu-system-x86_64 >/dev/null || {
    echo "net.sh: qemu-system-x86_64 missing (bench/vmm.sh --install-qemu)" >&2
    exit 1
}
bash scripts/ensure-net.sh
cargo build -q --release -p vmm
target=${CARGO_TARGET_DIR:-$repo/target}
CARGO_ENCODED_RUSTFLAGS=$(printf '%s\x1f%s\x1f%s' -Crelocation-model=static -Cno-redzone=yes \
    -Ctarget-feature=-sse,-sse2,-x87) \
    cargo build -q --release --offline --target x86_64-unknown-linux-gnu \
    --manifest-path vmm/guest/Cargo.toml --target-dir "$target/guest" 2>/dev/null
guest=$target/guest/x86_64-unknown-linux-gnu/release/vmm-test-guest
vmm=$target/release/vmm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run in a fresh namespace: $1 = ours|qemu; prints "h2g_MBps g2h_MBps rtt_us".
cat >"$work/one.sh" <<'EOF'
set -euo pipefail
which=$1 guest=$2 vmm=$3 seconds=$4 count=$5 work=$6
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
python3 - "$seconds" "$count" <<'PY'
import socket, statistics, struct, sys, time
seconds, count = float(sys.argv[1]), int(sys.argv[2])
guest = "10.96.0.2"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.96.0.1", 0))
s.settimeout(2)
# Round trip first (the ARP entry is made by the first echo).
rtts = []
for i in range(210):
    t = time.perf_counter()
    s.sendto(b"x" * 64, (guest, 7))
    s.recvfrom(2048)
    if i >= 10:
        rtts.append(time.perf_counter() - t)
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
print("%.3f %.3f %.1f" % (h2g, g2h, statistics.median(rtts) * 1e6))
PY
sleep 0.3
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
EOF

run() {
    unshare -n bash "$work/one.sh" "$1" "$guest" "$vmm" "$seconds" "$count" "$work"
}

# One untimed run each first (page cache, CPU frequency).
run ours >/dev/null
run qemu >/dev/null
results=()
for pair in $(seq "$pairs"); do
    read -r oh og ort < <(run ours)
    read -r qh qg qrt < <(run qemu)
    printf 'pair %d: ours h2g %7.3f MB/s g2h %7.3f MB/s rtt %8.1f us | qemu h2g %7.3f MB/s g2h %7.3f MB/s rtt %8.1f us\n' \
        "$pair" "$oh" "$og" "$ort" "$qh" "$qg" "$qrt"
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
