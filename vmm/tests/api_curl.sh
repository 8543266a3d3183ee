#!/usr/bin/env bash
# The control API through a plain HTTP client: curl --unix-socket against
# a running `vmm --api-socket`, checking Cloud Hypervisor's status codes
# and bodies. Run by tests/api_curl.rs (which passes the binaries):
#   api_curl.sh VMM GUEST DIR
# Exits non-zero with one line naming the first mismatch.
set -euo pipefail
vmm=$1 guest=$2 dir=$3
sock=$dir/api.sock
"$vmm" --api-socket "path=$sock" >"$dir/vmm.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
for _ in $(seq 500); do [ -S "$sock" ] && break; sleep 0.01; done

# call METHOD ENDPOINT WANTED_STATUS [BODY]: the body answered goes to $dir/body.
call() {
    local method=$1 endpoint=$2 want=$3 body=${4-}
    local args=(-s -o "$dir/body" -w '%{http_code}' --unix-socket "$sock" -X "$method")
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    local got
    got=$(curl "${args[@]}" "http://localhost/api/v1/$endpoint")
    if [ "$got" != "$want" ]; then
        echo "$method $endpoint: HTTP $got, expected $want: $(cat "$dir/body")" >&2
        exit 1
    fi
}
expect_body() {
    if ! grep -q -- "$1" "$dir/body"; then
        echo "body lacks '$1': $(cat "$dir/body")" >&2
        exit 1
    fi
}

call GET vmm.ping 200
expect_body '"version"'
call GET vm.info 404
call GET vm.counters 404
call PUT vm.boot 404
call PUT vm.pause 404
call GET vm.nonexistent 404
call PUT vm.info 400
call PUT vm.create 400 '{"payload": '
expect_body '^\["invalid vm.create body'
call PUT vm.create 400 '{"payload": {"kernel": "/nonexistent"}}'
expect_body 'payload.kernel'

truncate -s 1M "$dir/vda.raw"
config=$(cat <<JSON
{"cpus": {"boot_vcpus": 1, "max_vcpus": 1},
 "memory": {"size": 33554432},
 "payload": {"kernel": "$guest", "cmdline": "guest.mode=io guest.reads=2 guest.writes=3 guest.flushes=1"},
 "disks": [{"path": "$dir/vda.raw", "id": "vda", "image_type": "Raw"}],
 "serial": {"mode": "Socket", "socket": "$dir/console.sock", "file": "$dir/console.log"}}
JSON
)
call PUT vm.create 204 "$config"
call PUT vm.create 405 "$config"
call GET vm.info 200
expect_body '"state":"Created"'
call PUT vm.pause 405
call PUT vm.boot 204
call PUT vm.boot 405
for _ in $(seq 3000); do grep -q 'io done' "$dir/console.log" 2>/dev/null && break; sleep 0.01; done
call GET vm.info 200
expect_body '"state":"Running"'
expect_body '"memory_actual_size":33554432'
call GET vm.counters 200
expect_body '"read_ops":2'
expect_body '"write_ops":3'
expect_body '"flush_ops":1'
expect_body '"write_bytes":12288'
call PUT vm.pause 204
call GET vm.info 200
expect_body '"state":"Paused"'
call PUT vm.resume 204
call PUT vm.resume 405
# vm.restore with CH's "resume": restored and running in one request; a
# body without it (CH's) leaves the VM paused.
call PUT vm.pause 204
call PUT vm.snapshot 204 "{\"destination_url\": \"file://$dir/snap\"}"
call PUT vm.delete 204
call PUT vm.restore 204 "{\"source_url\": \"file://$dir/snap\", \"prefault\": false}"
call GET vm.info 200
expect_body '"state":"Paused"'
call PUT vm.delete 204
call PUT vm.restore 400 "{\"source_url\": \"file://$dir/snap\", \"resume\": 1}"
call PUT vm.restore 204 "{\"source_url\": \"file://$dir/snap\", \"resume\": true}"
call GET vm.info 200
expect_body '"state":"Running"'
call PUT vm.resume 405
call PUT vm.restore 405 "{\"source_url\": \"file://$dir/snap\", \"resume\": true}"
call PUT vm.reboot 204
call PUT vm.shutdown 204
call GET vm.info 200
expect_body '"state":"Shutdown"'
call PUT vm.power-button 405
call PUT vm.boot 204 '{"paused": true}'
call GET vm.info 200
expect_body '"state":"Paused"'
call PUT vm.resume 204
call PUT vm.power-button 204
# The guest powers off: vmm exits 0 and removes its sockets.
status=0
wait $pid || status=$?
trap - EXIT
if [ "$status" != 0 ]; then
    echo "vmm exited $status after the power button: $(cat "$dir/vmm.log")" >&2
    exit 1
fi
if [ -e "$sock" ] || [ -e "$dir/console.sock" ]; then
    echo "sockets left behind after power-off" >&2
    exit 1
fi
echo "api_curl: ok"
