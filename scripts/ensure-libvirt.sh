#!/usr/bin/env bash
# Installs what the `vm` tests hold us against if missing: virsh and
# virt-xml-validate (libvirt-clients) and the xmllint that
# virt-xml-validate runs (libxml2-utils).
set -euo pipefail
if command -v virsh >/dev/null && command -v virt-xml-validate >/dev/null &&
    command -v xmllint >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libvirt-clients libxml2-utils
