#!/usr/bin/env bash
# Builds every fuzz target (nightly, AddressSanitizer) and runs each for
# SECONDS with its seed corpus (made by scripts/fuzz-seeds.sh if missing)
# and its dictionary (fuzz/<target>.dict if there is one, else the qcow2
# one), under a 512 MiB RSS limit (and the same limit on any single
# allocation) and a per-input timeout. Fails (exit 1) if any
# target hits a crash, panic, leak, out-of-memory or timeout; the input is
# then in fuzz/artifacts/<target>/ and the log in
# fuzz/artifacts/<target>/run.log. Prints executions and executions per
# second per target at the end.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(header open_image snapshot_table virtio_blk domain_xml api_request vm_state migration_stream virtio_net vpc vdi vmdk qed vhdx iso9660)
fi
for t in "${targets[@]}"; do
    # virtio_net starts from an empty corpus (and needs root: it makes a
    # network namespace and taps).
    [ "$t" = virtio_net ] && continue
    if [ -z "$(ls -A "corpus/$t" 2>/dev/null)" ]; then
        bash ../scripts/fuzz-seeds.sh || exit 1
        break
    fi
done

# AddressSanitizer keeps freed memory in a quarantine (256 MiB by default)
# to catch use-after-free. These targets free large buffers all the time
# (in-memory images up to 64 MiB, whole tables, 64 KiB read buffers), so
# with the default the quarantine alone fills half of the RSS limit: runs
# of open_image climbed past 512 MiB after a few hundred to a thousand
# inputs, while the same inputs peaked at ~230 MiB with a 16 MiB
# quarantine and the largest live allocation was far below the limit.
# 32 MiB keeps use-after-free detection for recent frees (the library is
# safe Rust apart from a few syscall wrappers) within the limit.
export ASAN_OPTIONS="quarantine_size_mb=32${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

cargo +nightly fuzz build || exit 1

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=artifacts/$t/run.log
    dict=qcow2.dict
    if [ -f "$t.dict" ]; then dict=$t.dict; fi
    echo "== $t: ${secs}s"
    cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" \
        -rss_limit_mb=512 \
        -malloc_limit_mb=512 \
        -timeout=20 \
        -dict="$dict" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
    rate=$(awk '/stat::average_exec_per_sec/ { print $2 }' "$log")
    rss=$(awk '/stat::peak_rss_mb/ { print $2 }' "$log")
    result=ok
    if [ $rc -ne 0 ] || grep -qE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|^SUMMARY:" "$log"; then
        result="FAILED (exit $rc): $(grep -m1 -E '^SUMMARY:|ERROR:' "$log")"
        grep -m1 "Test unit written to" "$log"
        status=1
    fi
    summary+=("$(printf '%-16s %12s execs %8s execs/s  peak RSS %5s MiB  %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${rss:-?}" "$result")")
done
echo
echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
