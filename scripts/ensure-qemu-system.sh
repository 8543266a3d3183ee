#!/usr/bin/env bash
# Installs qemu-system-x86 (qemu-system-x86_64) if missing, from Debian's
# bookworm-backports suite, as qemu-utils: the main suite's 7.2 would pull
# qemu-utils back to 7.2. The tests that hold our in-image snapshots
# against QEMU's savevm need it; the benchmarks run it beside our VMM.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null; then
    exit 0
fi
bash "$(dirname "$0")/ensure-qemu.sh"
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -t bookworm-backports qemu-system-x86
