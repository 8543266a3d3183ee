//! `vm` held against libvirt's own virsh: the same domains defined in our
//! store and in a test:///FILE driver file (libvirt's in-process test
//! driver, no daemon), then every command both print the same way
//! compared byte for byte, stdout, stderr and exit status. Also: dumpxml
//! validated by `virt-xml-validate`, and hostile XML refused with one line
//! and the store unchanged.
//!
//! Needs virsh and virt-xml-validate (package libvirt-clients); skipped
//! without them unless REQUIRE_LIBVIRT is set (scripts/test.sh sets it).

mod support;

use std::path::Path;
use std::process::Command;

use support::cli::{text, vm};
use support::virsh::{have_virsh, same, virsh, Sides};

/// A domain both sides define: name, uuid, memory in MiB, vCPUs, disks.
struct Dom {
    name: &'static str,
    uuid: &'static str,
    mib: u64,
    vcpus: u32,
    disks: &'static [(&'static str, &'static str)],
}

const DOMAINS: &[Dom] = &[
    Dom {
        name: "alpha",
        uuid: "11111111-2222-3333-4444-555555555555",
        mib: 64,
        vcpus: 1,
        disks: &[("vda", "/var/tmp/alpha.qcow2")],
    },
    Dom {
        name: "Beta",
        uuid: "21111111-2222-3333-4444-555555555555",
        mib: 32,
        vcpus: 2,
        disks: &[
            ("vda", "/var/tmp/beta-root.qcow2"),
            ("vdb", "/var/tmp/data.raw"),
        ],
    },
    Dom {
        name: "gamma-with-a-long-name",
        uuid: "31111111-2222-3333-4444-555555555555",
        mib: 1024,
        vcpus: 4,
        disks: &[],
    },
];

/// The domain's XML with `type` (kvm for us, test for libvirt) and, for
/// the test driver, the state shut off.
fn domain_xml(d: &Dom, kind: &str) -> String {
    let disks: String = d
        .disks
        .iter()
        .map(|(dev, file)| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{file}'/><target dev='{dev}' bus='virtio'/></disk>"
            )
        })
        .collect();
    let runstate = if kind == "test" {
        "<test:runstate>5</test:runstate>"
    } else {
        ""
    };
    format!(
        "<domain type='{kind}' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n  <name>{}</name>\n  <uuid>{}</uuid>\n  <memory unit='MiB'>{}</memory>\n  <vcpu>{}</vcpu>\n  <os>\n    <type>hvm</type>\n    <kernel>/boot/vmlinux</kernel>\n  </os>\n  <devices>{disks}</devices>\n  {runstate}\n</domain>\n",
        d.name, d.uuid, d.mib, d.vcpus
    )
}

/// Each of `domains` on both sides.
fn setup(domains: &[Dom]) -> Sides {
    let defined: Vec<(&str, String, String)> = domains
        .iter()
        .map(|d| (d.name, domain_xml(d, "kvm"), domain_xml(d, "test")))
        .collect();
    Sides::new(&defined)
}

#[test]
fn listings_match_virsh_byte_for_byte() {
    if !have_virsh(true) {
        return;
    }
    let sides = setup(DOMAINS);
    for args in [
        &["list", "--all"][..],
        &["list", "--inactive"],
        &["list"],
        &["list", "--all", "--name"],
        &["list", "--all", "--uuid"],
        &["list", "--all", "--uuid", "--name"],
        &["list", "--all", "--id"],
        &["list", "--inactive", "--id", "--name"],
        &["list", "--state-shutoff"],
        &["list", "--all", "--state-running"],
        &[
            "list",
            "--all",
            "--state-paused",
            "--state-shutoff",
            "--name",
        ],
        &["-q", "list", "--all"],
        &["-q", "list"],
        &["-q", "list", "--all", "--name"],
    ] {
        same(&sides, args);
    }
}

#[test]
fn domain_commands_match_virsh_byte_for_byte() {
    if !have_virsh(true) {
        return;
    }
    let sides = setup(DOMAINS);
    for d in DOMAINS {
        for args in [
            &["domuuid", d.name][..],
            &["domid", d.name],
            &["domstate", d.name],
            &["domstate", d.name, "--reason"],
            &["domname", d.uuid],
            &["domuuid", d.uuid],
            &["domblklist", d.name],
            &["domblklist", "--details", d.name],
            &["-q", "domblklist", d.name],
            &["vcpucount", d.name],
            &["-q", "domstate", "--domain", d.name],
        ] {
            same(&sides, args);
        }
    }
    let empty = setup(&[]);
    same(&empty, &["list", "--all"]);
    same(&empty, &["-q", "list", "--all"]);
}

/// `text` with each line's value after `key` replaced, for fields whose
/// values are the host's (CPU affinity, node figures) and differ between a
/// real host and the test driver's made-up one.
fn mask_values(text: &str, keys: &[&str]) -> String {
    text.lines()
        .map(|line| match keys.iter().find(|k| line.starts_with(*k)) {
            Some(key) => {
                let width = line[key.len()..].len() - line[key.len()..].trim_start().len();
                format!("{key}{}<value>\n", " ".repeat(width))
            }
            None => format!("{line}\n"),
        })
        .collect()
}

#[test]
fn info_layouts_match_virsh_apart_from_host_figures() {
    if !have_virsh(true) {
        return;
    }
    let sides = setup(DOMAINS);
    // The test driver's dominfo adds its security driver's lines, says
    // "linux" where the qemu driver says the OS type, and makes up a CPU
    // time for a domain that is off; everything else must match.
    let test_driver_only = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with("Security ") && !l.starts_with("CPU time:"))
            .map(|l| {
                format!(
                    "{}\n",
                    l.replace("OS Type:        linux", "OS Type:        hvm")
                )
            })
            .collect()
    };
    for d in DOMAINS {
        let ours = vm(&sides.store, &["dominfo", d.name]);
        let theirs = virsh(&sides.node, &["dominfo", d.name]);
        assert_eq!(
            text(&ours.stdout),
            test_driver_only(text(&theirs.stdout)),
            "dominfo {}",
            d.name
        );
        for args in [&["vcpuinfo", d.name][..], &["vcpuinfo", "--pretty", d.name]] {
            let ours = vm(&sides.store, args);
            let theirs = virsh(&sides.node, args);
            assert_eq!(
                (
                    mask_values(&text(&ours.stdout), &["CPU Affinity:"]),
                    ours.status.code()
                ),
                (
                    mask_values(&text(&theirs.stdout), &["CPU Affinity:"]),
                    theirs.status.code()
                ),
                "{args:?}"
            );
        }
        for args in [&["dommemstat", d.name][..], &["domblkstat", d.name, "vda"]] {
            same(&sides, args);
        }
    }
    let node_keys = [
        "CPU model:",
        "CPU(s):",
        "CPU frequency:",
        "CPU socket(s):",
        "Core(s) per socket:",
        "Thread(s) per core:",
        "NUMA cell(s):",
        "Memory size:",
    ];
    let ours = vm(&sides.store, &["nodeinfo"]);
    let theirs = virsh(&sides.node, &["nodeinfo"]);
    assert_eq!(
        mask_values(&text(&ours.stdout), &node_keys),
        mask_values(&text(&theirs.stdout), &node_keys)
    );
}

#[test]
fn mistakes_match_virsh_byte_for_byte() {
    if !have_virsh(true) {
        return;
    }
    let sides = setup(DOMAINS);
    for args in [
        &["dominfo", "nosuch"][..],
        &["domstate", "nosuch"],
        &["domuuid", "nosuch"],
        &["dumpxml", "nosuch"],
        &["undefine", "nosuch"],
        &["destroy", "nosuch"],
        &["domstats", "nosuch"],
        &["domstats", "alpha", "nosuch"],
        &["domname", "alpha"],
        &["frob"],
        &["-q", "frob"],
        &["list", "--bogus"],
        &["list", "x"],
        &["list", "--all", "--all"],
        &["dominfo"],
        &["dominfo", "a", "b"],
        &["dominfo", "--domain"],
        &["domstats", "--bogus"],
        &["domblkinfo", "alpha"],
        &["define", "/nonexistent/file.xml"],
        &["destroy", "alpha"],
        &["reboot", "alpha"],
        &["reset", "alpha"],
    ] {
        same(&sides, args);
    }
}

#[test]
fn dominfo_has_virsh_layout() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alpha.xml");
    std::fs::write(&file, domain_xml(&DOMAINS[0], "kvm")).unwrap();
    let store = dir.path().join("store");
    let out = vm(&store, &["define", file.to_str().unwrap()]);
    assert_eq!(
        text(&out.stdout),
        format!("Domain 'alpha' defined from {}\n\n", file.display())
    );
    let out = vm(&store, &["dominfo", "alpha"]);
    assert_eq!(
        text(&out.stdout),
        "Id:             -\n\
         Name:           alpha\n\
         UUID:           11111111-2222-3333-4444-555555555555\n\
         OS Type:        hvm\n\
         State:          shut off\n\
         CPU(s):         1\n\
         Max memory:     65536 KiB\n\
         Used memory:    65536 KiB\n\
         Persistent:     yes\n\
         Autostart:      disable\n\
         Managed save:   no\n\n"
    );
    // -q silences virsh's messages.
    let out = vm(&store, &["-q", "undefine", "alpha"]);
    assert_eq!(
        (text(&out.stdout), out.status.code()),
        (String::new(), Some(0))
    );
    let out = vm(&store, &["list", "--all"]);
    assert_eq!(
        text(&out.stdout),
        " Id   Name   State\n--------------------\n\n"
    );
}

#[test]
fn dumpxml_is_valid_libvirt_xml_and_keeps_unknown_elements() {
    if !have_virsh(true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = dir.path().join("full.xml");
    std::fs::write(
        &file,
        "<domain type='kvm'>
  <name>full</name>
  <title>Everything we read</title>
  <memory unit='GiB'>1</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu current='1'>2</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>/boot/vmlinux</kernel>
    <initrd>/boot/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/tmp/full.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <serial>disk-serial-1</serial>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/tmp/x.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
    )
    .unwrap();
    assert!(vm(&store, &["define", file.to_str().unwrap()])
        .status
        .success());
    let out = vm(&store, &["-q", "dumpxml", "full"]);
    let xml = text(&out.stdout);
    for kept in [
        "<title>Everything we read</title>",
        "<features>\n    <acpi/>\n  </features>",
        "<serial>disk-serial-1</serial>",
        "<graphics type='vnc' port='-1' autoport='yes'/>",
        "<console type='pty'>\n      <target type='serial' port='0'/>\n    </console>",
        "<memory unit='KiB'>1048576</memory>",
        "<currentMemory unit='KiB'>524288</currentMemory>",
        "<vcpu placement='static' current='1'>2</vcpu>",
        "<cmdline>console=ttyS0 root=/dev/vda</cmdline>",
    ] {
        assert!(xml.contains(kept), "{kept} missing from:\n{xml}");
    }
    let dumped = dir.path().join("dumped.xml");
    std::fs::write(&dumped, &xml).unwrap();
    let check = Command::new("virt-xml-validate")
        .arg(&dumped)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "virt-xml-validate refused our dumpxml: {}{}\n{xml}",
        text(&check.stdout),
        text(&check.stderr)
    );
    // Defining the dump again changes nothing.
    assert!(vm(&store, &["define", dumped.to_str().unwrap()])
        .status
        .success());
    assert_eq!(text(&vm(&store, &["-q", "dumpxml", "full"]).stdout), xml);
}

#[test]
fn hostile_xml_gets_one_line_and_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let good = dir.path().join("good.xml");
    std::fs::write(&good, domain_xml(&DOMAINS[0], "kvm")).unwrap();
    assert!(vm(&store, &["define", good.to_str().unwrap()])
        .status
        .success());
    let snapshot = |store: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(store.join("domains"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&store);
    let disk =
        |i: usize| format!("<disk type='file'><source file='/x{i}'/><target dev='vd{i}'/></disk>");
    let million_disks: String = (0..100_000).map(disk).collect();
    let hostile = [
        "<domain type='kvm'><name>alpha</name>".to_string(),
        "<domain type='kvm'><name>x</name></nam></domain>".to_string(),
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain type='kvm'><name>&b;</name></domain>".to_string(),
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domain type='kvm'><name>&x;</name></domain>".to_string(),
        format!("<domain type='kvm'><name>many</name><memory>1024</memory><os><type>hvm</type></os><devices>{million_disks}</devices></domain>"),
        "<domain type='kvm'><name>big</name><memory unit='EiB'>8</memory><os><type>hvm</type></os></domain>".to_string(),
        "<domain type='kvm'><name>cpus</name><memory>1024</memory><vcpu>4294967296</vcpu><os><type>hvm</type></os></domain>".to_string(),
        "<domain type='kvm'><name>../../etc/x</name><memory>1024</memory><os><type>hvm</type></os></domain>".to_string(),
        "<domain type='kvm'><name>alpha</name><uuid>99999999-2222-3333-4444-555555555555</uuid><memory>1024</memory><os><type>hvm</type></os></domain>".to_string(),
        format!("<domain type='kvm'><name>deep</name><memory>1</memory><os><type>hvm</type></os>{}{}</domain>", "<a>".repeat(10_000), "</a>".repeat(10_000)),
        "\u{0}\u{1}binary".to_string(),
    ];
    for (i, xml) in hostile.iter().enumerate() {
        let file = dir.path().join(format!("hostile{i}.xml"));
        std::fs::write(&file, xml).unwrap();
        let out = vm(&store, &["define", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "input {i}: {stderr}");
        assert!(stderr.starts_with("error: "), "input {i}: {stderr}");
        assert!(stderr.len() < 400, "input {i}: {stderr}");
        if i != 8 {
            assert_eq!(stderr.lines().count(), 1, "input {i}: {stderr}");
        }
        assert_eq!(snapshot(&store), before, "input {i} changed the store");
    }
}

#[test]
fn a_closed_pipe_ends_vm_as_sigpipe_would() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the read end is ours; closing it leaves the pipe without a reader.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end is ours and handed over once.
    let write_end = unsafe { std::process::Stdio::from(std::fs::File::from_raw_fd(fds[1])) };
    let out = Command::new(env!("CARGO_BIN_EXE_vm"))
        .arg("-c")
        .arg(dir.path().join("store"))
        .arg("nodeinfo")
        .stdout(write_end)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert_eq!(text(&out.stderr), "", "nothing on stderr");
}

/// `vm` whose stdout or stderr is a pipe nobody reads ends as virsh
/// ends: virsh keeps SIGPIPE's default action, so its first write to the
/// closed stream kills it by SIGPIPE, and a command that writes nothing
/// there ends with its own code. Both run each command with the same
/// stream closed; their (exit code, signal) must match.
#[test]
fn closed_stdout_or_stderr_ends_vm_as_it_ends_virsh() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    if !have_virsh(false) {
        return;
    }
    let sides = setup(DOMAINS);
    let ending = |mut cmd: Command, stdout_closed: bool| {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        if stdout_closed {
            cmd.stdout(writer).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::null()).stderr(writer);
        }
        let status = cmd.stdin(Stdio::null()).status().expect("starts");
        (status.code(), status.signal())
    };
    for stdout_closed in [true, false] {
        for args in [
            &["list", "--all"][..],
            &["dominfo", "alpha"],
            &["dominfo", "nosuch"],
            &["-q", "dominfo", "nosuch"],
            &["frob"],
            &["list", "--bogus"],
            &["domname", "alpha"],
        ] {
            let mut ours = Command::new(env!("CARGO_BIN_EXE_vm"));
            ours.arg("-c").arg(&sides.store).args(args);
            let mut theirs = Command::new("virsh");
            theirs
                .arg("-c")
                .arg(format!("test://{}", sides.node.display()))
                .args(args);
            assert_eq!(
                ending(ours, stdout_closed),
                ending(theirs, stdout_closed),
                "vm {args:?}, stdout closed: {stdout_closed} (left: ours, right: virsh)"
            );
        }
    }
}
