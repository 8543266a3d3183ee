//! libvirt's own `virsh` as the reference `vm` is held against: its
//! in-process test driver (`test:///default`, or `test://NODE` over a
//! node file of our domains), no daemon needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::cli::{text, vm};

/// Whether virsh (and, with `validator`, virt-xml-validate and xmllint)
/// can run; a missing one panics when REQUIRE_LIBVIRT is set (as
/// scripts/test.sh sets it) and is said on stderr otherwise.
pub fn have_virsh(validator: bool) -> bool {
    let runs = |program: &str, arg: &str| Command::new(program).arg(arg).output().is_ok();
    let found = runs("virsh", "--version")
        && (!validator || (runs("virt-xml-validate", "--help") && runs("xmllint", "--version")));
    let what = if validator {
        "virsh, virt-xml-validate and xmllint are"
    } else {
        "virsh is"
    };
    if !found && std::env::var_os("REQUIRE_LIBVIRT").is_some() {
        panic!("{what} required (REQUIRE_LIBVIRT is set): bash scripts/ensure-libvirt.sh");
    }
    if !found {
        eprintln!("skipped: {what} needed (bash scripts/ensure-libvirt.sh)");
    }
    found
}

/// `virsh -c test:///default ARGS...` (one session: the default test
/// driver's state lives only as long as the process).
pub fn virsh_default(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", "test:///default"])
        .args(args)
        .output()
        .expect("virsh can be started")
}

/// `virsh -c test://NODE ARGS...`.
pub fn virsh(node: &Path, args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(format!("test://{}", node.display()))
        .args(args)
        .output()
        .expect("virsh can be started")
}

/// The same domains on both sides: defined in our store, and written to
/// a node file for virsh's test driver.
pub struct Sides {
    /// Holds the store and the node file.
    pub _dir: tempfile::TempDir,
    /// Our store (`vm -c STORE`).
    pub store: PathBuf,
    /// The test driver's node file.
    pub node: PathBuf,
}

impl Sides {
    /// Defines each `(name, our XML, the test driver's XML)`: ours with
    /// `vm define`, theirs in one `<node>` file.
    pub fn new(domains: &[(&str, String, String)]) -> Sides {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let mut node = String::from("<node>\n");
        for (name, ours, theirs) in domains {
            let file = dir.path().join(format!("{name}.xml"));
            std::fs::write(&file, ours).expect("domain XML written");
            let out = vm(&store, &["define", file.to_str().expect("a UTF-8 path")]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            node.push_str(theirs);
        }
        node.push_str("</node>\n");
        let node_file = dir.path().join("node.xml");
        std::fs::write(&node_file, node).expect("node file written");
        Sides {
            _dir: dir,
            store,
            node: node_file,
        }
    }
}

/// Runs `args` on both sides; stdout, stderr and exit status must match.
pub fn same(sides: &Sides, args: &[&str]) {
    let ours = vm(&sides.store, args);
    let theirs = virsh(&sides.node, args);
    assert_eq!(
        (text(&ours.stdout), text(&ours.stderr), ours.status.code()),
        (
            text(&theirs.stdout),
            text(&theirs.stderr),
            theirs.status.code()
        ),
        "vm {args:?} differs from virsh (left: ours, right: virsh)"
    );
}
