#!/usr/bin/env bash
# Installs xorriso if missing: the iso9660 crate's tests and vm install's
# tests build ISO 9660 images (Rock Ridge, Joliet, El Torito) with it.
set -euo pipefail
command -v xorriso >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq xorriso
