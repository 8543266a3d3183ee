//! `vm install` against the real `vmm` and the test guest, with installer
//! discs xorriso builds (isolinux.cfg, grub.cfg or a known tree naming
//! the test guest as the kernel): virt-install's two seed lines, `--boot
//! kernel=`, `--location` (an ISO, an install-tree folder), `--import`,
//! every option through `--print-xml` (whose XML virt-xml-validate
//! accepts), `--dry-run`, and failures at each step leaving no domain, image or boot folder behind.
//! Needs /dev/kvm and xorriso (skipped without them unless REQUIRE_KVM /
//! REQUIRE_XORRISO are set; scripts/test.sh sets both).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::guest::{build_guest, ensure_vmm, have_kvm};

fn have_xorriso() -> bool {
    let found = Command::new("xorriso").arg("-version").output().is_ok();
    if !found && std::env::var_os("REQUIRE_XORRISO").is_some() {
        panic!("xorriso is missing (bash scripts/ensure-xorriso.sh installs it)");
    }
    if !found {
        eprintln!("skipped: xorriso is missing");
    }
    found
}

/// A test bed: a folder (the current folder of every `vm` run), a store
/// in it, the guest built.
struct Bed {
    dir: tempfile::TempDir,
    store: PathBuf,
    guest: PathBuf,
}

fn bed() -> Option<Bed> {
    if !have_kvm() || !have_xorriso() {
        return None;
    }
    ensure_vmm();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Some(Bed {
        store,
        guest: build_guest(),
        dir,
    })
}

impl Bed {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn vm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vm"))
            .current_dir(self.dir.path())
            .arg("-c")
            .arg(&self.store)
            .args(args)
            .env_remove("VM_VMM")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.vm(args);
        assert!(
            out.status.success(),
            "vm {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must fail with one line; returns the line.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.vm(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "vm {args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        err
    }

    /// An ISO built from `files` (path on the disc, contents) with the
    /// guest at `kernel_at` if given.
    fn iso(&self, name: &str, kernel_at: Option<&str>, files: &[(&str, &str)]) -> PathBuf {
        let tree = self.path(&format!("{name}.tree"));
        for (path, contents) in files {
            let file = tree.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, contents).unwrap();
        }
        if let Some(kernel) = kernel_at {
            let file = tree.join(kernel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::copy(&self.guest, file).unwrap();
        }
        std::fs::create_dir_all(&tree).unwrap();
        let iso = self.path(name);
        let out = Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-R",
                "-J",
                "-V",
                "INSTALLER",
                "-o",
            ])
            .arg(&iso)
            .arg(&tree)
            .output()
            .unwrap();
        assert!(out.status.success(), "xorriso: {}", text(&out.stderr));
        iso
    }

    /// The installer the seed lines use: isolinux.cfg naming the guest.
    fn installer(&self) -> PathBuf {
        self.iso(
            "installer.iso",
            Some("boot/guest"),
            &[(
                "isolinux/isolinux.cfg",
                "default vesamenu.c32\nlabel install\n  menu default\n  kernel /boot/guest\n  append guest.mode=idle\n",
            )],
        )
    }

    /// Waits for `text` in the domain's console log.
    fn wait_console(&self, name: &str, wanted: &str) {
        let log = self.store.join("run").join(name).join("console.log");
        let start = Instant::now();
        loop {
            let got = std::fs::read_to_string(&log).unwrap_or_default();
            if got.contains(wanted) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no '{wanted}' in {got:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Checks that nothing of domain `name` is left.
    fn nothing_left(&self, name: &str) {
        assert!(!self
            .store
            .join("domains")
            .join(format!("{name}.xml"))
            .exists());
        assert!(!self.store.join("boot").join(name).exists());
        assert!(!self.store.join("run").join(name).exists());
        let images: Vec<_> = std::fs::read_dir(self.store.join("images"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(images.is_empty(), "left: {images:?}");
        assert!(!self.ok(&["list", "--all", "--name"]).contains(name));
    }

    fn validate(&self, xml: &str) {
        let found = Command::new("virt-xml-validate")
            .arg("--help")
            .output()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("REQUIRE_LIBVIRT").is_none(),
                "virt-xml-validate missing"
            );
            return;
        }
        let file = self.path("dumped.xml");
        std::fs::write(&file, xml).unwrap();
        let out = Command::new("virt-xml-validate")
            .arg(&file)
            .arg("domain")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "virt-xml-validate: {}{}\n{xml}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

impl Drop for Bed {
    /// A failed test leaves no VMM running: every running domain of the
    /// store is destroyed.
    fn drop(&mut self) {
        let names = self.vm(&["list", "--name"]);
        for name in text(&names.stdout).lines().filter(|l| !l.trim().is_empty()) {
            let _ = self.vm(&["destroy", name.trim()]);
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A qcow2 image's virtual size from its header.
fn qcow2_size(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"QFI\xfb", "{} is not a qcow2", path.display());
    u64::from_be_bytes(bytes[24..32].try_into().unwrap())
}

const PROGRESS: &str = "Starting install...\nAllocating 'my_vm.qcow2'\nCreating domain...\nDomain creation completed.\n";

#[test]
fn seed_line_with_size_and_cdrom() {
    let Some(bed) = bed() else { return };
    let iso = bed.installer();
    let iso_arg = iso.to_str().unwrap();
    let out = bed.ok(&[
        "install",
        "--name",
        "my_vm",
        "--memory",
        "2048",
        "--vcpus",
        "2",
        "--disk",
        "size=20",
        "--cdrom",
        iso_arg,
        "--noautoconsole",
    ]);
    assert!(out.starts_with(PROGRESS), "{out}");
    bed.wait_console("my_vm", "guest: idle");
    let image = bed.store.join("images/my_vm.qcow2");
    assert_eq!(qcow2_size(&image), 20 << 30);
    assert_eq!(
        std::fs::read(bed.store.join("boot/my_vm/kernel")).unwrap(),
        std::fs::read(&bed.guest).unwrap()
    );
    let info = bed.ok(&["dominfo", "my_vm"]);
    assert!(info.contains("CPU(s):         2"), "{info}");
    assert!(info.contains("Max memory:     2097152 KiB"), "{info}");
    let xml = bed.ok(&["dumpxml", "my_vm"]);
    assert!(
        xml.contains("<cmdline>console=ttyS0 guest.mode=idle</cmdline>"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("<source file='{}'/>", iso.display())),
        "{xml}"
    );
    // The disc is a CD-ROM, as virt-install attaches it (on the bus the
    // VMM serves: virtio), read-only.
    assert!(
        xml.contains(&format!(
            "<disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>",
            iso.display()
        )),
        "{xml}"
    );
    bed.validate(&xml);
    let blk = bed.ok(&["domblklist", "my_vm"]);
    assert!(blk.contains("vda") && blk.contains("vdb"), "{blk}");
    // A second install of the same name is refused and changes nothing.
    let err = bed.refused(&[
        "install",
        "--name",
        "my_vm",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--cdrom",
        iso_arg,
        "--noautoconsole",
    ]);
    assert_eq!(err, "error: Guest name 'my_vm' is already in use.\n");
    assert_eq!(qcow2_size(&image), 20 << 30);
    assert!(!bed.store.join("images/my_vm-1.qcow2").exists());
    bed.ok(&["destroy", "my_vm"]);
}

#[test]
fn seed_line_with_an_existing_path() {
    let Some(bed) = bed() else { return };
    let iso = bed.installer();
    std::fs::File::create(bed.path("myvm.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = bed.ok(&[
        "install",
        "--name",
        "myvm",
        "--memory",
        "2048",
        "--vcpus",
        "2",
        "--disk",
        "path=myvm.img",
        "--cdrom",
        iso.to_str().unwrap(),
        "--noautoconsole",
    ]);
    assert!(
        out.starts_with("Starting install...\nCreating domain...\nDomain creation completed.\n"),
        "{out}"
    );
    bed.wait_console("myvm", "guest: idle");
    let xml = bed.ok(&["dumpxml", "myvm"]);
    assert!(
        xml.contains(&format!(
            "<source file='{}'/>",
            bed.path("myvm.img").display()
        )),
        "{xml}"
    );
    assert!(xml.contains("type='raw'"), "{xml}");
    assert_eq!(
        std::fs::metadata(bed.path("myvm.img")).unwrap().len(),
        1 << 20
    );
    bed.ok(&["destroy", "myvm"]);
    // undefine leaves the user's image alone, and takes the kernel and
    // initrd copied off the disc with it.
    let boot = bed.store.join("boot").join("myvm");
    assert!(boot.is_dir());
    bed.ok(&["undefine", "myvm"]);
    assert!(bed.path("myvm.img").exists());
    assert!(!boot.exists());
}

#[test]
fn direct_kernel_boot_location_and_import() {
    let Some(bed) = bed() else { return };
    let guest = bed.guest.to_str().unwrap().to_string();
    let out = bed.ok(&[
        "install",
        "--name",
        "direct",
        "--memory",
        "64",
        "--disk",
        "size=1,format=raw",
        "--boot",
        &format!("kernel={guest},kernel_args=console=ttyS0 guest.mode=idle"),
        "--osinfo",
        "detect=on,require=off",
        "--graphics",
        "none",
        "--network",
        "none",
        "--autoconsole",
        "none",
    ]);
    assert!(out.contains("Allocating 'direct.qcow2'"), "{out}");
    bed.wait_console("direct", "guest: idle");
    let raw = std::fs::metadata(bed.store.join("images/direct.qcow2")).unwrap();
    assert_eq!(raw.len(), 1 << 30, "format=raw makes a raw file");
    bed.ok(&["destroy", "direct"]);
    // --location with kernel= on the disc; the disc has no configuration.
    let iso = bed.iso("tree.iso", Some("custom/k"), &[]);
    bed.ok(&[
        "install",
        "--name",
        "loc",
        "--memory",
        "64",
        "--location",
        &format!("{},kernel=/custom/k", iso.display()),
        "--extra-args",
        "guest.mode=idle",
        "--noautoconsole",
    ]);
    bed.wait_console("loc", "guest: idle");
    bed.ok(&["destroy", "loc"]);
    // --import of an existing disk.
    std::fs::File::create(bed.path("disk.raw"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    bed.ok(&[
        "install",
        "--name",
        "imp",
        "--memory",
        "64",
        "--import",
        "--disk",
        "disk.raw,format=raw",
        "--boot",
        &format!("kernel={guest},cmdline=console=ttyS0 guest.mode=idle"),
        "--noautoconsole",
    ]);
    bed.wait_console("imp", "guest: idle");
    bed.ok(&["destroy", "imp"]);
}

/// An install tree on the host (a folder laid out as a disc is).
fn install_tree(bed: &Bed, name: &str, kernel_at: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = bed.path(name);
    for (path, contents) in files {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, contents).unwrap();
    }
    let kernel = tree.join(kernel_at);
    std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    std::fs::copy(&bed.guest, kernel).unwrap();
    tree
}

#[test]
fn location_of_an_install_tree_folder() {
    let Some(bed) = bed() else { return };
    // A Debian-style tree: its isolinux.cfg names the kernel and initrd.
    let debian = install_tree(
        &bed,
        "debian-tree",
        "install.amd/vmlinuz",
        &[
            ("install.amd/initrd.gz", "initrd of the tree"),
            (
                "isolinux/txt.cfg",
                "default install\nlabel install\n  kernel /install.amd/vmlinuz\n  append initrd=/install.amd/initrd.gz guest.mode=idle\n",
            ),
            ("isolinux/isolinux.cfg", "include txt.cfg\n"),
        ],
    );
    let out = bed.ok(&[
        "install",
        "--name",
        "tree",
        "--memory",
        "64",
        "--location",
        debian.to_str().unwrap(),
        "--noautoconsole",
    ]);
    assert!(
        out.starts_with("Starting install...\nCreating domain...\n"),
        "{out}"
    );
    bed.wait_console("tree", "guest: idle");
    assert_eq!(
        std::fs::read(bed.store.join("boot/tree/initrd")).unwrap(),
        b"initrd of the tree"
    );
    let xml = bed.ok(&["dumpxml", "tree"]);
    assert!(
        xml.contains("<cmdline>console=ttyS0 guest.mode=idle</cmdline>"),
        "{xml}"
    );
    // A folder is not attached as a disc.
    assert!(!xml.contains("<disk"), "{xml}");
    bed.validate(&xml);
    bed.ok(&["destroy", "tree"]);
    // A known tree without a configuration (Ubuntu's casper/), and
    // kernel=/initrd= overrides, relative to the tree.
    let ubuntu = install_tree(
        &bed,
        "ubuntu-tree",
        "casper/vmlinuz",
        &[("casper/initrd", "i")],
    );
    let xml = bed.ok(&[
        "install",
        "--name",
        "u",
        "--memory",
        "64",
        "--location",
        ubuntu.to_str().unwrap(),
        "--print-xml",
    ]);
    assert!(
        xml.contains("<cmdline>console=ttyS0 boot=casper</cmdline>"),
        "{xml}"
    );
    assert!(xml.contains("/boot/u/initrd</initrd>"), "{xml}");
    let custom = install_tree(&bed, "custom-tree", "k/guest", &[("k/ramdisk", "r")]);
    bed.ok(&[
        "install",
        "--name",
        "c",
        "--memory",
        "64",
        "--location",
        &format!("{},kernel=k/guest,initrd=/k/ramdisk", custom.display()),
        "--extra-args",
        "guest.mode=idle",
        "--noautoconsole",
    ]);
    bed.wait_console("c", "guest: idle");
    assert_eq!(
        std::fs::read(bed.store.join("boot/c/initrd")).unwrap(),
        b"r"
    );
    bed.ok(&["destroy", "c"]);
    // An override leaving the tree, a missing one, a tree with no kernel
    // and a folder given to --cdrom: one line each, nothing left.
    let cases = [
        (
            format!(
                "{},kernel=../debian-tree/install.amd/vmlinuz",
                custom.display()
            ),
            "leaves the install tree",
        ),
        (
            format!("{},kernel=/nope", custom.display()),
            "no file '/nope' there",
        ),
        (
            bed.path("custom-tree/k").display().to_string(),
            "no kernel found on",
        ),
    ];
    for (location, expected) in cases {
        let err = bed.refused(&[
            "install",
            "--name",
            "bad",
            "--memory",
            "64",
            "--location",
            &location,
        ]);
        assert!(err.contains(expected), "{location}: {err}");
        bed.nothing_left("bad");
    }
    let err = bed.refused(&[
        "install",
        "--name",
        "bad",
        "--memory",
        "64",
        "--cdrom",
        debian.to_str().unwrap(),
    ]);
    assert!(err.contains("is a folder: give an ISO image"), "{err}");
    bed.nothing_left("bad");
}

#[test]
fn every_option_through_print_xml_and_dry_run() {
    let Some(bed) = bed() else { return };
    let guest = bed.guest.to_str().unwrap();
    std::fs::File::create(bed.path("base.raw"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let xml = bed.ok(&[
        "install",
        "--name",
        "all",
        "--memory",
        "memory=512,currentMemory=256,maxMemory=1024",
        "--vcpus",
        "2,maxvcpus=4,sockets=1,cores=2,threads=2,cpuset=0",
        "--disk",
        "size=2,cache=none",
        "--disk",
        "path=over.qcow2,backing_store=base.raw",
        "--disk",
        "path=base.raw,readonly=on,bus=virtio",
        "--disk",
        "path=cd.raw,size=1,device=cdrom,format=raw",
        "--boot",
        &format!("kernel={guest},initrd={guest},kernel_args=quiet"),
        "--print-xml",
    ]);
    for wanted in [
        "<maxMemory slots='16' unit='KiB'>1048576</maxMemory>",
        "<memory unit='KiB'>524288</memory>",
        "<currentMemory unit='KiB'>262144</currentMemory>",
        "<vcpu placement='static' cpuset='0' current='2'>4</vcpu>",
        "<topology sockets='1' dies='1' cores='2' threads='2'/>",
        "<driver name='qemu' type='qcow2' cache='none'/>",
        "<readonly/>",
        "device='cdrom'",
        "<cmdline>quiet</cmdline>",
        &format!("<initrd>{guest}</initrd>"),
        "<target dev='vdd' bus='virtio'/>",
    ] {
        assert!(xml.contains(wanted), "no {wanted} in\n{xml}");
    }
    bed.validate(&xml);
    assert!(
        !bed.store.join("images").exists(),
        "--print-xml creates nothing"
    );
    assert!(!bed.path("over.qcow2").exists());
    let out = bed.ok(&[
        "install",
        "--name",
        "dry",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--cdrom",
        bed.installer().to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(out, "Starting install...\nAllocating 'dry.qcow2'\nCreating domain...\nDry run completed successfully\n\n");
    bed.nothing_left("dry");
    // A new qcow2 over a backing file, made by the library.
    bed.ok(&[
        "install",
        "--name",
        "backed",
        "--memory",
        "64",
        "--disk",
        "path=over.qcow2,backing_store=base.raw",
        "--boot",
        &format!("kernel={guest},cmdline=console=ttyS0 guest.mode=idle"),
        "--noautoconsole",
    ]);
    bed.wait_console("backed", "guest: idle");
    assert_eq!(qcow2_size(&bed.path("over.qcow2")), 1 << 20);
    let image = std::fs::read(bed.path("over.qcow2")).unwrap();
    assert!(
        image.windows(8).any(|w| w == b"base.raw"),
        "no backing name"
    );
    bed.ok(&["destroy", "backed"]);
}

#[test]
fn grub_and_known_trees_are_found() {
    let Some(bed) = bed() else { return };
    let grub = bed.iso(
        "grub.iso",
        Some("images/pxeboot/vmlinuz"),
        &[("boot/grub/grub.cfg", "set default=0\nmenuentry 'Install' {\n  linux ($root)/images/pxeboot/vmlinuz guest.mode=idle\n  initrd /images/pxeboot/initrd.img\n}\n"),
          ("images/pxeboot/initrd.img", "initrd")],
    );
    let xml = bed.ok(&[
        "install",
        "--name",
        "g",
        "--memory",
        "64",
        "--cdrom",
        grub.to_str().unwrap(),
        "--print-xml",
    ]);
    assert!(
        xml.contains("<cmdline>console=ttyS0 guest.mode=idle</cmdline>"),
        "{xml}"
    );
    assert!(xml.contains("/boot/g/initrd</initrd>"), "{xml}");
    let tree = bed.iso(
        "debian.iso",
        Some("install.amd/vmlinuz"),
        &[("install.amd/initrd.gz", "x")],
    );
    let xml = bed.ok(&[
        "install",
        "--name",
        "d",
        "--memory",
        "64",
        "--cdrom",
        tree.to_str().unwrap(),
        "--print-xml",
    ]);
    assert!(xml.contains("<cmdline>console=ttyS0</cmdline>"), "{xml}");
    let fedora = bed.iso("fedora.iso", Some("images/pxeboot/vmlinuz"), &[]);
    let xml = bed.ok(&[
        "install",
        "--name",
        "f",
        "--memory",
        "64",
        "--cdrom",
        fedora.to_str().unwrap(),
        "--print-xml",
    ]);
    assert!(xml.contains("inst.stage2=hd:LABEL=INSTALLER"), "{xml}");
    // The grub disc boots, its initrd copied out.
    bed.ok(&[
        "install",
        "--name",
        "g",
        "--memory",
        "64",
        "--cdrom",
        grub.to_str().unwrap(),
        "--noautoconsole",
    ]);
    bed.wait_console("g", "guest: idle");
    assert_eq!(
        std::fs::read(bed.store.join("boot/g/initrd")).unwrap(),
        b"initrd"
    );
    bed.ok(&["destroy", "g"]);
}

#[test]
fn a_failed_install_leaves_nothing_behind() {
    let Some(bed) = bed() else { return };
    let iso = bed.installer();
    let iso_arg = iso.to_str().unwrap();
    // The VMM refuses at start: memory over the host's.
    let err = bed.refused(&[
        "install",
        "--name",
        "big",
        "--memory",
        "16000000",
        "--disk",
        "size=1",
        "--cdrom",
        iso_arg,
        "--noautoconsole",
    ]);
    assert!(err.contains("over the host's"), "{err}");
    bed.nothing_left("big");
    // A disc with no kernel: one line naming what was looked for.
    let empty = bed.iso("empty.iso", None, &[("README", "no kernel here")]);
    let err = bed.refused(&[
        "install",
        "--name",
        "nok",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--cdrom",
        empty.to_str().unwrap(),
        "--noautoconsole",
    ]);
    assert!(
        err.contains("no kernel found")
            && err.contains("/isolinux/isolinux.cfg")
            && err.contains("/casper/vmlinuz"),
        "{err}"
    );
    bed.nothing_left("nok");
    // A hostile disc: not ISO 9660 at all, and a truncated one.
    std::fs::write(bed.path("junk.iso"), vec![0u8; 40_000]).unwrap();
    let err = bed.refused(&[
        "install",
        "--name",
        "junk",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--cdrom",
        "junk.iso",
        "--noautoconsole",
    ]);
    assert!(err.contains("not an ISO 9660 image"), "{err}");
    let bytes = std::fs::read(&iso).unwrap();
    let elf = std::fs::read(&bed.guest).unwrap();
    let kernel_at = bytes
        .windows(64)
        .position(|w| w == &elf[..64])
        .expect("the kernel is on the disc");
    std::fs::write(bed.path("cut.iso"), &bytes[..kernel_at + 100]).unwrap();
    let err = bed.refused(&[
        "install",
        "--name",
        "cut",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--cdrom",
        "cut.iso",
        "--noautoconsole",
    ]);
    assert!(
        err.contains("past the image") || err.contains("reading"),
        "{err}"
    );
    bed.nothing_left("cut");
    // The second disk cannot be made: the first one goes too.
    std::fs::create_dir(bed.path("taken")).unwrap();
    let err = bed.refused(&[
        "install",
        "--name",
        "two",
        "--memory",
        "64",
        "--disk",
        "size=1",
        "--disk",
        "path=taken/x/../../taken,size=1,format=raw",
        "--cdrom",
        iso_arg,
        "--noautoconsole",
    ]);
    assert!(
        err.contains("Error creating storage") || err.contains("taken"),
        "{err}"
    );
    bed.nothing_left("two");
    // A missing disc, a path without size, bad options.
    for (args, wanted) in [
        (vec!["--cdrom", "missing.iso"], "missing.iso"),
        (
            vec!["--disk", "path=new.img", "--cdrom", iso_arg],
            "size is required",
        ),
        (
            vec!["--vcpus", "4,maxvcpus=2", "--cdrom", iso_arg],
            "requested cpu amount exceeds maximum (4 > 2)",
        ),
        (
            vec!["--disk", "size=1,format=vmdk", "--cdrom", iso_arg],
            "format 'vmdk'",
        ),
    ] {
        let mut line = vec![
            "install",
            "--name",
            "bad",
            "--memory",
            "64",
            "--noautoconsole",
        ];
        line.extend(args);
        let err = bed.refused(&line);
        assert!(err.contains(wanted), "{line:?}: {err}");
        bed.nothing_left("bad");
    }
}

/// Runs `body` on a thread of its own in a fresh network namespace (the
/// `ip` and `vm` it runs inherit it), as the net tests do.
fn in_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the
        // calling thread.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

#[test]
fn network_bridge_is_the_interface_vm_runs() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = root
        && Path::new("/dev/net/tun").exists()
        && Command::new("ip").arg("-V").output().is_ok()
        && Command::new("ping").arg("-V").output().is_ok();
    if !tools {
        assert!(
            std::env::var_os("REQUIRE_KVM").is_none(),
            "REQUIRE_KVM is set but root, /dev/net/tun, ip or ping is missing"
        );
        eprintln!("skipped: needs root, /dev/net/tun, ip and ping");
        return;
    }
    let Some(bed) = bed() else { return };
    let guest = bed.guest.to_str().unwrap().to_string();
    in_netns(move || {
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.96.0.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        let boot =
            format!("kernel={guest},kernel_args=console=ttyS0 guest.mode=net guest.ip=10.96.0.2");
        // virt-install's XML for a bridge, a MAC made up in 52:54:00.
        let xml = bed.ok(&[
            "install",
            "--name",
            "net",
            "--memory",
            "32",
            "--boot",
            &boot,
            "--network",
            "bridge=br0",
            "--print-xml",
        ]);
        let start = xml.find("<interface type='bridge'>").expect("an interface");
        let mac = &xml[xml.find("<mac address='").unwrap() + 14..][..17];
        assert!(mac.starts_with("52:54:00:"), "{xml}");
        assert_eq!(
            &xml[start..xml[start..].find("</interface>").unwrap() + start],
            format!("<interface type='bridge'>\n      <source bridge='br0'/>\n      <mac address='{mac}'/>\n      <model type='virtio'/>\n    ")
        );
        bed.validate(&xml);
        bed.ok(&[
            "install",
            "--name",
            "net",
            "--memory",
            "32",
            "--boot",
            &boot,
            "--network",
            "bridge=br0,mac=52:54:00:00:00:42,model=virtio",
            "--noautoconsole",
        ]);
        bed.wait_console("net", "guest: net ready mac=52:54:00:00:00:42");
        let out = Command::new("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "5", "10.96.0.2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ping: {}", text(&out.stdout));
        let list = bed.ok(&["domiflist", "net"]);
        assert!(list.contains("bridge") && list.contains("br0"), "{list}");
        bed.ok(&["destroy", "net"]);
        // A missing bridge fails the start: nothing is left.
        let err = bed.refused(&[
            "install",
            "--name",
            "nobr",
            "--memory",
            "32",
            "--boot",
            &boot,
            "--network",
            "bridge=nosuchbr",
            "--noautoconsole",
        ]);
        assert!(err.contains("nosuchbr"), "{err}");
        bed.nothing_left("nobr");
        // Libvirt's virtual networks are refused in one line.
        let err = bed.refused(&[
            "install",
            "--name",
            "n2",
            "--memory",
            "32",
            "--boot",
            &boot,
            "--network",
            "network=default",
        ]);
        assert!(
            err.contains("'network=default' is not supported: only bridge=BRIDGE"),
            "{err}"
        );
        bed.nothing_left("n2");
    });
}
