//! `clone --original DOMAIN --name NEW [--auto-clone] [--file PATH]...
//! [--linked]`, as virt-clone: the original must be shut off or paused
//! (the VMM flushes its disks when the API pauses it, so they can be read
//! from outside; `--linked` needs it shut off); each writable disk is copied through our own
//! image engine (`img convert`: allocated data only, sparse) to the path
//! `--file` gives, in order, or one made from the original's (`--auto-clone`:
//! virt-clone's `NAME-clone` rules); read-only disks and cdroms are shared.
//! The clone gets the new name, a new UUID and a new random MAC address
//! (52:54:00:xx:xx:xx) for every interface, and is defined only once
//! every disk is copied; a failure removes what it made.
//!
//! `--linked` copies nothing: the original's disk becomes the read-only
//! base of two new qcow2 overlays, one for the clone and one the original
//! now writes to (the image locks forbid writing a base another domain
//! reads, and a base written later would change under the clone).

use std::path::{Path, PathBuf};

use super::{lookup_by, By, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::state;
use crate::vm::runtime::{self, Status, QUERY_TIMEOUT};
use crate::vm::xml::{DiskFormat, DomainDef, DomainName, Uuid};

/// The new domain's name (`--name`, or with `--auto-clone` virt-clone's
/// next free one), refused in virt-clone's words when missing or in use,
/// and locked in the store (checked again under the lock) until the
/// clone is defined.
pub(super) fn claim_new_name(
    ctx: &Ctx,
    inv: &Invocation,
    original: &DomainName,
    auto: bool,
) -> Result<(DomainName, crate::vm::store::DomainLock), VmError> {
    let new_name = match inv.value("name") {
        Some(name) => DomainName::new(name)?,
        None if auto => clone_name(ctx, original.as_str())?,
        None => {
            return Err(VmError::Refused(
                "A name is required for the new virtual machine, use '--name NEW_VM_NAME' to specify one."
                    .into(),
            ))
        }
    };
    let taken = |name: &DomainName| -> Result<bool, VmError> {
        Ok(name == original || ctx.store.read_definition(name)?.is_some())
    };
    let in_use = || {
        VmError::Refused(format!(
            "Invalid name for new guest: Guest name '{new_name}' is already in use."
        ))
    };
    if taken(&new_name)? {
        return Err(in_use());
    }
    let lock = ctx.store.lock(&new_name)?;
    if taken(&new_name)? {
        return Err(in_use());
    }
    Ok((new_name, lock))
}

/// Most clone names or paths tried when making one up.
pub(super) const MAX_TRIES: u32 = 1000;

/// virt-clone's name for a clone of `base`: `base-clone`, then
/// `base-clone1`, ...; a name already ending in `-cloneN` counts on.
pub(super) fn clone_name(ctx: &Ctx, base: &str) -> Result<DomainName, VmError> {
    let (stem, mut number, forced) = match base.rfind("-clone") {
        Some(at) if base[at + 6..].bytes().all(|b| b.is_ascii_digit()) => {
            let n = base[at + 6..].parse::<u32>().map_or(1, |n| n + 1);
            (&base[..at], n, true)
        }
        _ => (base, 1, false),
    };
    for attempt in 0..MAX_TRIES {
        let text = if attempt == 0 && !forced {
            format!("{stem}-clone")
        } else {
            let n = number;
            number += 1;
            format!("{stem}-clone{n}")
        };
        let name = DomainName::new(&text).map_err(VmError::from)?;
        if ctx.store.read_definition(&name)?.is_none() {
            return Ok(name);
        }
    }
    Err(VmError::OperationFailed(format!(
        "no free clone name for '{base}'"
    )))
}

/// virt-clone's path for a copy of `original` (a disk of domain
/// `orig_name`) for domain `new_name`: `DIR/STEM-clone.EXT`, or
/// `DIR/NEW.EXT` when the stem is the original's name; `-1`, `-2`, ...
/// until no file is there.
pub(super) fn clone_path(original: &str, orig_name: &str, new_name: &str, tag: &str) -> PathBuf {
    let path = Path::new(original);
    let (stem, suffix) = match original.rsplit_once('.') {
        Some((s, ext)) if ext.len() <= 7 && !ext.contains('/') => (s, format!(".{ext}")),
        _ => (original, String::new()),
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    let base_name = Path::new(stem)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clone_base = if base_name == orig_name && tag == "clone" {
        new_name.to_string()
    } else {
        format!("{base_name}-{tag}")
    };
    let mut candidate = dir.join(format!("{clone_base}{suffix}"));
    let mut n = 1;
    while candidate.exists() && n < MAX_TRIES {
        candidate = dir.join(format!("{clone_base}-{n}{suffix}"));
        n += 1;
    }
    candidate
}

fn format_name(format: Option<&DiskFormat>) -> Result<&'static str, VmError> {
    match format {
        Some(DiskFormat::Qcow2) => Ok("qcow2"),
        Some(DiskFormat::Raw) | None => Ok("raw"),
        Some(DiskFormat::Other(f)) => Err(VmError::Unsupported(format!(
            "cannot clone a disk of format '{f}'"
        ))),
    }
}

/// Runs one `img` command through our image engine, in this process.
pub(super) fn img(args: &[&str]) -> Result<(), VmError> {
    let mut argv = vec!["img"];
    argv.extend_from_slice(args);
    let cli = crate::cli::parse_args(&argv)
        .map_err(|e| VmError::Internal(format!("img {}: {e:?}", args.join(" "))))?;
    let result = match &cli.command {
        crate::cli::Command::Convert(a) => crate::commands::convert::run(a),
        crate::cli::Command::Create(a) => crate::commands::create::run(a),
        _ => return Err(VmError::Internal("img: unexpected command".into())),
    };
    match result {
        Ok(0) => Ok(()),
        Ok(code) => Err(VmError::OperationFailed(format!(
            "img {} ended with status {code}",
            args.join(" ")
        ))),
        Err(e) => Err(VmError::OperationFailed(
            format!("{e:#}").replace('\n', " "),
        )),
    }
}

/// A random MAC address in QEMU's and libvirt's range `52:54:00:xx:xx:xx`
/// (unicast, as virt-clone gives each interface of a clone), none of
/// `taken`.
fn new_mac(taken: &[String]) -> Result<String, VmError> {
    use std::io::Read;
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| VmError::Internal(format!("cannot make a MAC address: /dev/urandom: {e}")))?;
    for _ in 0..MAX_TRIES {
        let mut bytes = [0u8; 3];
        urandom
            .read_exact(&mut bytes)
            .map_err(|e| VmError::Internal(format!("cannot make a MAC address: {e}")))?;
        let mac = format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            bytes[0], bytes[1], bytes[2]
        );
        if !taken.contains(&mac) {
            return Ok(mac);
        }
    }
    Err(VmError::OperationFailed(
        "no free MAC address in 52:54:00:xx:xx:xx".into(),
    ))
}

/// The `<interface>` element `text` with its MAC address set to `mac`: the
/// `<mac address>` value replaced where there is one, else a `<mac>`
/// element added as its first child. The rest of the text is kept as
/// given.
fn with_mac(text: &str, mac: &str) -> Result<String, VmError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: 1_000,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|e| VmError::Internal(format!("an <interface> of the original: {e}")))?;
    let root = doc.root_element();
    let address = root
        .children()
        .find(|n| n.has_tag_name("mac"))
        .and_then(|n| n.attribute_node("address"));
    if let Some(address) = address {
        let at = address.range_value();
        return Ok(format!("{}{mac}{}", &text[..at.start], &text[at.end..]));
    }
    let element = format!("<mac address='{mac}'/>");
    if let Some(first) = root.first_child() {
        let at = first.range().start;
        return Ok(format!("{}{element}{}", &text[..at], &text[at..]));
    }
    // No children: `<interface .../>` or `<interface ...></interface>`.
    let end = root.range().end;
    let head = &text[..end];
    Ok(match head.strip_suffix("/>") {
        Some(open) => format!("{open}>{element}</interface>{}", &text[end..]),
        None => {
            let close = head.rfind("</").unwrap_or(end);
            format!("{}{element}{}", &text[..close], &text[close..])
        }
    })
}

/// Gives every `<interface>` of `def` a new random MAC address, unused
/// by any domain of the store and by `def`'s other interfaces, as
/// virt-clone does (two guests on one network with one MAC would steal
/// each other's frames).
pub(super) fn give_new_macs(ctx: &Ctx, def: &mut DomainDef) -> Result<(), VmError> {
    use crate::vm::xml::Device;
    if !def
        .other_devices()
        .any(|(element, _)| element == "interface")
    {
        return Ok(());
    }
    let mut taken = Vec::new();
    for other in ctx
        .store
        .definitions()?
        .iter()
        .chain(std::iter::once(&*def))
    {
        if let Ok(interfaces) = crate::vm::xml::interface::interfaces(other) {
            taken.extend(interfaces.into_iter().filter_map(|i| i.mac));
        }
    }
    for device in &mut def.devices {
        if let Device::Other { element, text } = device {
            if element == "interface" {
                let mac = new_mac(&taken)?;
                *text = with_mac(text, &mac)?;
                taken.push(mac);
            }
        }
    }
    Ok(())
}

/// What cloning one disk makes.
struct Planned {
    disk: usize,
    from: String,
    to: PathBuf,
    format: &'static str,
    /// `--linked`: the original's own new overlay.
    original_top: Option<PathBuf>,
}

/// `clone --original DOMAIN --name NEW [--auto-clone] [--file PATH]...
/// [--linked]`.
pub fn clone(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    if inv.value("from-snapshot").is_some() {
        return super::fork::fork(ctx, inv, out);
    }
    let original = inv.value("original").ok_or_else(|| {
        VmError::Refused(
            "An original machine name is required, use '--original ORIGINAL_GUEST' and try again."
                .into(),
        )
    })?;
    let files = inv.argv();
    let auto = inv.flag("auto-clone");
    let linked = inv.flag("linked");
    if files.is_empty() && !auto {
        return Err(VmError::Refused(
            "Either --auto-clone or --file is required, use '--auto-clone or --file' and try again."
                .into(),
        ));
    }
    let orig = lookup_by(ctx, original, By::ALL)
        .map_err(|_| VmError::Refused(format!("Domain '{original}' was not found.")))?;
    let _orig_lock = ctx.store.lock(&orig.name)?;
    // A paused original (older virt-clones allowed it; today's want it
    // shut off) is read while its VMM holds the disks: its API pause
    // flushed them, the store lock held here keeps `vm resume` out, and
    // the copy shares the images (`-U`) instead of locking them.
    let status = runtime::inspect(&ctx.store, &orig.name, QUERY_TIMEOUT, None);
    let paused = match &status {
        Status::Active(_) if status.state().0 == state::PAUSED => true,
        Status::Active(_) => {
            return Err(VmError::Refused(
                "Domain with devices to clone must be paused or shutoff.".into(),
            ))
        }
        _ => false,
    };
    if paused && linked {
        return Err(VmError::Refused(format!(
            "Domain '{}' is paused: --linked needs it shut off, since its VMM would go on writing the disk that becomes the clone's base",
            orig.name
        )));
    }
    let (new_name, _new_lock) = claim_new_name(ctx, inv, &orig.name, auto)?;

    // Plan every disk before touching anything.
    let mut plans = Vec::new();
    let mut given = files.iter();
    for (index, disk) in orig.disks.iter().enumerate() {
        let Some(source) = disk.source.clone() else {
            continue;
        };
        if disk.is_readonly() {
            continue; // shared, as virt-clone shares read-only disks
        }
        let to = match given.next() {
            Some(path) => PathBuf::from(path),
            None if auto => clone_path(&source, orig.name.as_str(), new_name.as_str(), "clone"),
            None => {
                return Err(VmError::Refused(format!(
                    "A disk path must be specified to clone '{source}'."
                )))
            }
        };
        if to.exists() {
            return Err(VmError::Refused(format!(
                "Could not use path '{}' for cloning: the file exists",
                to.display()
            )));
        }
        let format = format_name(disk.format.as_ref())?;
        let original_top = linked.then(|| {
            clone_path(
                &source,
                orig.name.as_str(),
                new_name.as_str(),
                orig.name.as_str(),
            )
        });
        plans.push(Planned {
            disk: index,
            from: source,
            to,
            format,
            original_top,
        });
    }

    let mut made: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for plan in &plans {
            let to = plan.to.to_string_lossy().into_owned();
            match &plan.original_top {
                None => {
                    // Allocated data only; the target starts zeroed.
                    made.push(plan.to.clone());
                    let mut args = vec!["convert"];
                    if paused {
                        args.push("-U");
                    }
                    args.extend_from_slice(&[
                        "-f",
                        plan.format,
                        "-O",
                        plan.format,
                        &plan.from,
                        &to,
                    ]);
                    img(&args)?;
                }
                Some(top) => {
                    let base = std::fs::canonicalize(&plan.from)
                        .map_err(|e| VmError::OperationFailed(format!("'{}': {e}", plan.from)))?;
                    let base = base.to_string_lossy().into_owned();
                    for overlay in [to.clone(), top.to_string_lossy().into_owned()] {
                        made.push(PathBuf::from(&overlay));
                        img(&[
                            "create",
                            "-q",
                            "-f",
                            "qcow2",
                            "-b",
                            &base,
                            "-F",
                            plan.format,
                            &overlay,
                        ])?;
                    }
                }
            }
        }
        let mut new_def: DomainDef = orig.clone();
        new_def.name = new_name.clone();
        new_def.uuid =
            Uuid::generate().map_err(|e| VmError::Internal(format!("cannot make a UUID: {e}")))?;
        give_new_macs(ctx, &mut new_def)?;
        for plan in &plans {
            let disk = &mut new_def.disks[plan.disk];
            disk.source = Some(plan.to.to_string_lossy().into_owned());
            if plan.original_top.is_some() {
                disk.format = Some(DiskFormat::Qcow2);
            }
        }
        ctx.store.write_definition(&new_def)?;
        if linked {
            let mut orig_def = orig.clone();
            for plan in &plans {
                if let Some(top) = &plan.original_top {
                    let disk = &mut orig_def.disks[plan.disk];
                    disk.source = Some(top.to_string_lossy().into_owned());
                    disk.format = Some(DiskFormat::Qcow2);
                }
            }
            if let Err(e) = ctx.store.write_definition(&orig_def) {
                let _ = ctx.store.remove_definition(&new_name);
                return Err(e.into());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for path in &made {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    for plan in plans.iter().filter(|p| p.original_top.is_some()) {
        ctx.extra(
            out,
            &format!(
                "Disk '{}' is now the read-only base of '{}' and '{}'\n",
                plan.from,
                plan.to.display(),
                plan.original_top.as_ref().expect("filtered").display()
            ),
        );
    }
    ctx.extra(
        out,
        &format!("\nClone '{new_name}' created successfully.\n"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_interface_gets_the_new_mac_and_keeps_the_rest() {
        let mac = "52:54:00:0a:0b:0c";
        assert_eq!(
            with_mac(
                "<interface type='bridge'>\n  <mac address=\"52:54:00:12:34:56\"/>\n  <source bridge='br0'/>\n</interface>",
                mac
            )
            .unwrap(),
            "<interface type='bridge'>\n  <mac address=\"52:54:00:0a:0b:0c\"/>\n  <source bridge='br0'/>\n</interface>"
        );
        assert_eq!(
            with_mac("<interface type='bridge'><source bridge='br0'/></interface>", mac).unwrap(),
            "<interface type='bridge'><mac address='52:54:00:0a:0b:0c'/><source bridge='br0'/></interface>"
        );
        assert_eq!(
            with_mac("<interface type='network'/>", mac).unwrap(),
            "<interface type='network'><mac address='52:54:00:0a:0b:0c'/></interface>"
        );
        assert_eq!(
            with_mac("<interface type='network'></interface>", mac).unwrap(),
            "<interface type='network'><mac address='52:54:00:0a:0b:0c'/></interface>"
        );
    }

    #[test]
    fn new_macs_are_in_qemus_range_and_avoid_those_taken() {
        let first = new_mac(&[]).unwrap();
        assert!(
            first.starts_with("52:54:00:") && first.len() == 17,
            "{first}"
        );
        let second = new_mac(std::slice::from_ref(&first)).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn clone_paths_follow_virt_clone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        assert_eq!(
            clone_path(&format!("{d}/disk.qcow2"), "vm1", "vm2", "clone"),
            dir.path().join("disk-clone.qcow2")
        );
        assert_eq!(
            clone_path(&format!("{d}/vm1.img"), "vm1", "vm2", "clone"),
            dir.path().join("vm2.img")
        );
        std::fs::write(dir.path().join("disk-clone.qcow2"), b"").unwrap();
        assert_eq!(
            clone_path(&format!("{d}/disk.qcow2"), "vm1", "vm2", "clone"),
            dir.path().join("disk-clone-1.qcow2")
        );
        assert_eq!(
            clone_path(&format!("{d}/noext"), "vm1", "vm2", "vm1"),
            dir.path().join("noext-vm1")
        );
    }
}
