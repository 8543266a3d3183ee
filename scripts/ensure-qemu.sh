#!/usr/bin/env bash
# Installs qemu-utils (qemu-img, qemu-io) if missing, from Debian's
# bookworm-backports suite (version 10; the main suite's 7.2 is older than
# the reference the tests hold us against).
set -euo pipefail
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
        $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -t bookworm-backports qemu-utils ||
    $SUDO apt-get install -y -qq qemu-utils
