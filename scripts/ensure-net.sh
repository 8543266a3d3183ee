#!/usr/bin/env bash
# Installs iproute2 (the `ip` command) and iputils-ping (`ping`) if
# missing: the virtio-net tests create taps in network namespaces of their
# own and configure them with `ip`, and vmm's net_guest test pings the
# test guest. They also need root (unshare(CLONE_NEWNET)) and /dev/net/tun.
set -euo pipefail
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
