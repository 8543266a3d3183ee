//! Unit tests of the domain XML reader and writer.

use super::*;
use crate::vm::xml::{CacheMode, DiskFormat, DomainName, MAX_NAME_BYTES};

const FULL: &str = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>demo</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <title>A demo &amp; more</title>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>32</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>/boot/vmlinux</kernel>
    <initrd>/boot/initrd</initrd>
    <cmdline>console=ttyS0 guest.mode=idle</cmdline>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/vm/demo.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/x.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <graphics type='vnc' port='-1'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-trace'/>
  </qemu:commandline>
</domain>
"#;

#[test]
fn reads_every_modeled_element() {
    let def = parse_domain(FULL.as_bytes()).unwrap();
    assert_eq!(def.name.as_str(), "demo");
    assert_eq!(def.uuid.to_string(), "6695eb01-f6a4-8304-79aa-97f2502e193f");
    assert_eq!(def.memory_kib, 65536);
    assert_eq!(def.current_memory_kib, 32768);
    assert_eq!((def.vcpus, def.vcpus_current), (2, 1));
    assert_eq!(def.os.kernel.as_deref(), Some("/boot/vmlinux"));
    assert_eq!(def.os.initrd.as_deref(), Some("/boot/initrd"));
    assert_eq!(
        def.os.cmdline.as_deref(),
        Some("console=ttyS0 guest.mode=idle")
    );
    assert_eq!(def.disks.len(), 2);
    let vda = def.disk("vda").unwrap();
    assert_eq!(vda.format, Some(DiskFormat::Qcow2));
    assert_eq!(vda.cache, Some(CacheMode::None));
    assert_eq!(vda.source.as_deref(), Some("/var/lib/vm/demo.qcow2"));
    assert!(!vda.is_readonly());
    assert!(def.disk("vdb").unwrap().is_readonly());
    assert!(def.disk("/iso/x.iso").is_some());
    let others: Vec<_> = def.other_devices().map(|(e, _)| e).collect();
    assert_eq!(others, ["serial", "graphics"]);
}

#[test]
fn writes_back_what_it_read_and_keeps_unknown_elements_as_given() {
    let def = parse_domain(FULL.as_bytes()).unwrap();
    let xml = def.to_xml();
    assert!(
        xml.contains("  <title>A demo &amp; more</title>\n"),
        "{xml}"
    );
    assert!(xml.contains("<clock offset='utc'/>"));
    assert!(
        xml.contains("<address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>")
    );
    assert!(xml.contains("<graphics type='vnc' port='-1'/>"));
    assert!(
        xml.contains("<qemu:commandline>\n    <qemu:arg value='-trace'/>\n  </qemu:commandline>")
    );
    assert!(xml.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"));
    assert!(xml.contains("<memory unit='KiB'>65536</memory>"));
    assert!(xml.contains("<vcpu placement='static' current='1'>2</vcpu>"));
    assert!(xml.contains("<boot dev='hd'/>"));
    // A second round trip is a fixed point.
    let again = parse_domain(xml.as_bytes()).unwrap();
    assert_eq!(again, def);
    assert_eq!(again.to_xml(), xml);
}

#[test]
fn makes_a_uuid_and_current_memory_when_absent() {
    let xml =
        "<domain type='kvm'><name>a</name><memory>1024</memory><os><type>hvm</type></os></domain>";
    let a = parse_domain(xml.as_bytes()).unwrap();
    let b = parse_domain(xml.as_bytes()).unwrap();
    assert_ne!(a.uuid, b.uuid);
    assert_eq!(a.current_memory_kib, 1024);
    let out = a.to_xml();
    assert!(out.contains(&format!("  <name>a</name>\n  <uuid>{}</uuid>\n", a.uuid)));
    assert!(out.contains(
        "<currentMemory unit='KiB'>1024</currentMemory>\n  <vcpu placement='static'>1</vcpu>"
    ));
}

fn refused(xml: &str) -> XmlError {
    parse_domain(xml.as_bytes()).expect_err(xml)
}

fn minimal_with(extra: &str) -> String {
    format!("<domain type='kvm'><name>a</name><memory>1024</memory><os><type>hvm</type></os>{extra}</domain>")
}

#[test]
fn refuses_malformed_documents() {
    assert!(matches!(
        refused("<domain type='kvm'><name>a</name>"),
        XmlError::Malformed(_)
    ));
    assert!(matches!(
        refused("<domain><name>a</nam></domain>"),
        XmlError::Malformed(_)
    ));
    assert!(matches!(refused(""), XmlError::Malformed(_)));
    assert!(matches!(refused("<network/>"), XmlError::NotADomain(_)));
    assert!(matches!(
        refused("<domain type='xen'/>"),
        XmlError::DomainType(_)
    ));
    assert!(matches!(
        refused("<domain type='kvm'><memory>1</memory><os><type>hvm</type></os></domain>"),
        XmlError::Missing("name")
    ));
    assert!(matches!(
        refused(&minimal_with("<name>b</name>")),
        XmlError::Duplicate(_)
    ));
}

#[test]
fn refuses_entities_and_dtds() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<domain type='kvm'><name>&lol3;</name></domain>"#;
    assert!(matches!(refused(laughs), XmlError::Malformed(_)));
    let external = r#"<?xml version="1.0"?>
<!DOCTYPE domain [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<domain type='kvm'><name>&xxe;</name></domain>"#;
    assert!(matches!(refused(external), XmlError::Malformed(_)));
    assert!(matches!(
        refused("<domain type='kvm'><name>&undefined;</name></domain>"),
        XmlError::Malformed(_)
    ));
}

#[test]
fn refuses_hostile_sizes_and_counts() {
    let big = format!(
        "<domain type='kvm'><name>{}</name></domain>",
        "a".repeat(MAX_XML_BYTES)
    );
    assert!(matches!(refused(&big), XmlError::TooLarge { .. }));
    let many = minimal_with(&"<x/>".repeat(MAX_NODES as usize + 1));
    assert!(matches!(refused(&many), XmlError::Malformed(_)));
    let deep = minimal_with(&format!(
        "{}{}",
        "<a>".repeat(MAX_DEPTH + 1),
        "</a>".repeat(MAX_DEPTH + 1)
    ));
    assert!(matches!(refused(&deep), XmlError::TooDeep { .. }));
    let disk =
        |i: usize| format!("<disk type='file'><source file='/x{i}'/><target dev='vd{i}'/></disk>");
    let disks: String = (0..=MAX_DISKS).map(disk).collect();
    assert!(matches!(
        refused(&minimal_with(&format!("<devices>{disks}</devices>"))),
        XmlError::TooManyDisks { .. }
    ));
    let twice = format!("<devices>{}{}</devices>", disk(1), disk(1));
    assert!(matches!(
        refused(&minimal_with(&twice)),
        XmlError::BadValue { .. }
    ));
    for memory in [
        "<memory unit='EiB'>1</memory>",
        "<memory>0</memory>",
        "<memory>-5</memory>",
    ] {
        let xml =
            format!("<domain type='kvm'><name>a</name>{memory}<os><type>hvm</type></os></domain>");
        assert!(
            matches!(refused(&xml), XmlError::BadValue { .. }),
            "{memory}"
        );
    }
    for vcpu in [
        "<vcpu>0</vcpu>",
        "<vcpu>100000</vcpu>",
        "<vcpu current='3'>2</vcpu>",
        "<vcpu>x</vcpu>",
    ] {
        assert!(
            matches!(refused(&minimal_with(vcpu)), XmlError::BadValue { .. }),
            "{vcpu}"
        );
    }
}

#[test]
fn refuses_bad_names() {
    for name in ["a/b", "", "..", ".hidden", " padded", "tab\there"] {
        let xml = format!("<domain type='kvm'><name>{name}</name><memory>1</memory><os><type>hvm</type></os></domain>");
        assert!(
            matches!(refused(&xml), XmlError::BadValue { .. }),
            "{name:?}"
        );
    }
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    assert!(DomainName::new(&long).is_err());
    assert!(DomainName::new("ok-name_1.2").is_ok());
}

#[test]
fn every_error_is_one_line() {
    let inputs = [
        "<domain type='kvm'><name>a</name>".to_string(),
        "<domain type='kvm'><name>a\nb/c</name></domain>".to_string(),
        minimal_with("<vcpu>\n\n12\n\nx</vcpu>"),
    ];
    for input in inputs {
        let message = refused(&input).to_string();
        assert!(!message.contains('\n'), "{message:?}");
    }
}

#[test]
fn prefixes_bound_below_the_root_are_declared_again_on_it() {
    let xml = minimal_with(
        "<devices xmlns:x='urn:x'><x:thing a='1'/><disk><source file='a&#10;b&#9;c'/><target dev='vda'/></disk></devices>",
    );
    let def = parse_domain(xml.as_bytes()).unwrap();
    let out = def.to_xml();
    assert!(out.contains("xmlns:x='urn:x'"), "{out}");
    let again = parse_domain(out.as_bytes()).unwrap();
    assert_eq!(again, def);
    assert_eq!(again.disks[0].source.as_deref(), Some("a\nb\tc"));
    let clash = minimal_with("<a xmlns:x='urn:1'><x:b/></a><c xmlns:x='urn:2'><x:d/></c>");
    assert!(matches!(refused(&clash), XmlError::Malformed(_)));
}
