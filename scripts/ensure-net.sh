#!/usr/bin/env bash
# Installs iproute2 (the `ip` command) if missing: the virtio-net tests
# create taps in network namespaces of their own and configure them with
# it. They also need root (unshare(CLONE_NEWNET)) and /dev/net/tun.
set -euo pipefail
if command -v ip >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq iproute2
