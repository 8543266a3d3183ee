//! `vm`'s network interface commands against `virsh -c test://NODE` on
//! the same domain XML (an `ethernet` and a `bridge` interface; the bridge's target is
//! `testnet0`, the name the test driver gives it whatever the XML says):
//! `domiflist` (and `-q`), `domifstat` and `domstats --interface` of a
//! shut-off domain, and their mistakes, byte for byte; bad `<interface>`
//! elements are refused at define with one line and the store unchanged.
//! `attach-interface`/`detach-interface --config` change the definition
//! (the test driver attaches and detaches nothing, so only their refusals
//! are held against it, byte for byte).

mod support;

use support::cli::{text, vm};
use support::virsh::{have_virsh, same, Sides};

const INTERFACES: &str = "\
    <interface type='ethernet'><mac address='52:54:00:12:34:56'/><target dev='tap0' managed='no'/><model type='virtio'/></interface>\n\
    <interface type='bridge'><mac address='52:54:00:ab:cd:ef'/><source bridge='br0'/><target dev='testnet0'/><model type='virtio'/></interface>\n";

fn domain_xml(kind: &str, devices: &str) -> String {
    let runstate = if kind == "test" {
        "<test:runstate>5</test:runstate>"
    } else {
        ""
    };
    format!(
        "<domain type='{kind}' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n  <name>netdom</name>\n  <uuid>41111111-2222-3333-4444-555555555555</uuid>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type>hvm</type>\n    <kernel>/boot/vmlinux</kernel>\n  </os>\n  <devices>\n{devices}  </devices>\n  {runstate}\n</domain>\n"
    )
}

fn setup() -> Sides {
    Sides::new(&[(
        "netdom",
        domain_xml("kvm", INTERFACES),
        domain_xml("test", INTERFACES),
    )])
}

#[test]
fn interface_commands_match_virsh_byte_for_byte() {
    if !have_virsh(false) {
        return;
    }
    let sides = setup();
    for args in [
        &["domiflist", "netdom"][..],
        &["-q", "domiflist", "netdom"],
        &["domiflist", "nosuch"],
        &["domifstat", "netdom", "tap0"],
        &["domifstat", "netdom"],
    ] {
        same(&sides, args);
    }
    // The test driver keeps no interface stats in domstats; ours lists
    // the interfaces of a shut-off domain by name.
    let ours = text(&vm(&sides.store, &["domstats", "--interface", "netdom"]).stdout);
    assert_eq!(
        ours,
        "Domain: 'netdom'\n  net.count=2\n  net.0.name=tap0\n  net.1.name=testnet0\n\n"
    );
}

#[test]
fn bad_interfaces_are_refused_at_define() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (devices, expected) in [
        (
            "<interface type='ethernet'><mac address='01:00:5e:00:00:01'/></interface>\n",
            "interface/mac/@address",
        ),
        (
            "<interface type='bridge'><model type='virtio'/></interface>\n",
            "interface/source bridge",
        ),
        (
            "<interface type='ethernet'><target dev='a-name-far-too-long'/></interface>\n",
            "interface/target/@dev",
        ),
    ] {
        let file = dir.path().join("bad.xml");
        std::fs::write(&file, domain_xml("kvm", devices)).unwrap();
        let out = vm(&store, &["define", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        let list = text(&vm(&store, &["list", "--all", "--name"]).stdout);
        assert!(!list.contains("netdom"), "nothing defined: {list}");
    }
}

#[test]
fn interfaces_attach_and_detach_in_the_definition() {
    if !have_virsh(false) {
        return;
    }
    let sides = setup();
    for args in [
        &["detach-interface", "netdom", "network", "--config"][..],
        &[
            "detach-interface",
            "netdom",
            "bridge",
            "--mac",
            "52:54:00:00:00:99",
            "--config",
        ],
        &["attach-interface", "netdom", "bogus", "br0", "--config"],
        &["attach-interface", "netdom", "bridge", "--config"],
        &["attach-interface", "nosuch", "bridge", "br0", "--config"],
    ] {
        same(&sides, args);
    }
    let run = |args: &[&str]| {
        let out = vm(&sides.store, args);
        (text(&out.stdout), text(&out.stderr), out.status.code())
    };
    let attached = run(&[
        "attach-interface",
        "netdom",
        "bridge",
        "br1",
        "--mac",
        "52:54:00:00:00:09",
        "--model",
        "virtio",
        "--config",
    ]);
    assert_eq!(
        attached,
        (
            "Interface attached successfully\n\n".into(),
            String::new(),
            Some(0)
        )
    );
    let list = run(&["domiflist", "netdom"]).0;
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["-", "bridge", "br1", "virtio", "52:54:00:00:00:09"]),
        "{list}"
    );
    // Two bridges now: which one must be said.
    let (_, err, code) = run(&["detach-interface", "netdom", "bridge", "--config"]);
    assert_eq!(
        (err.as_str(), code),
        ("error: Domain has 2 interfaces. Please specify which one to detach using --mac\nerror: Failed to detach interface\n", Some(1))
    );
    // A bad MAC is refused with the definition unchanged.
    let (_, err, code) = run(&[
        "attach-interface",
        "netdom",
        "bridge",
        "br1",
        "--mac",
        "01:00:5e:00:00:01",
        "--config",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("mac") && err.ends_with("error: Failed to attach interface\n"),
        "{err}"
    );
    let detached = run(&[
        "detach-interface",
        "netdom",
        "bridge",
        "--mac",
        "52:54:00:00:00:09",
        "--config",
    ]);
    assert_eq!(
        detached,
        (
            "Interface detached successfully\n\n".into(),
            String::new(),
            Some(0)
        )
    );
    // Back to the definition virsh has: domiflist matches it again.
    same(&sides, &["domiflist", "netdom"]);
    // A shut-off domain has no live interfaces to change.
    let (_, err, code) = run(&["attach-interface", "netdom", "bridge", "br1", "--live"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: Requested operation is not valid: domain is not running\n"),
        "{err}"
    );
}
