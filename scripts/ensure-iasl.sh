#!/usr/bin/env bash
# Installs iasl (acpica-tools) if missing: vmm's ACPI tests disassemble
# the tables the VMM writes (the DSDT's devices, the VM generation ID's
# ADDR method) and check what Linux will parse.
set -euo pipefail
command -v iasl >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq acpica-tools
