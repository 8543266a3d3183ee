#!/usr/bin/env bash
# Writes seed domain XMLs for the domain_xml target into DIR: a full
# definition with every element vm models and some it keeps as text, a
# minimal one, and namespaced, commented and CDATA variants.
set -euo pipefail
dir=${1:?usage: domain_xml_seeds.sh DIR}
mkdir -p "$dir"
cat >"$dir/full.xml" <<'XML'
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>demo</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <title>A demo &amp; more</title>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>32</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='microvm'>hvm</type>
    <kernel>/boot/vmlinux</kernel>
    <initrd>/boot/initrd</initrd>
    <cmdline>console=ttyS0 guest.mode=idle</cmdline>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/vmm</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/vm/demo.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/x.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-trace'/></qemu:commandline>
</domain>
XML
printf "<domain type='kvm'><name>a</name><memory>1024</memory><os><type>hvm</type></os></domain>" >"$dir/minimal.xml"
printf "<?xml version='1.0' encoding='UTF-8'?>\n<!-- c --><domain type='kvm'><name><![CDATA[c]]></name><memory unit='GB'>1</memory><vcpu current='2'>4</vcpu><os><type>hvm</type><?pi x?></os><devices><disk type='block' device='disk'><source dev='/dev/sda'/><target dev='sda' bus='sata'/></disk></devices></domain>" >"$dir/variants.xml"
