#!/usr/bin/env bash
# Installs curl if missing: vmm's API tests drive the API with
# `curl --unix-socket` (vmm/tests/api_curl.sh).
set -euo pipefail
command -v curl >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq curl
