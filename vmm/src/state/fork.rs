//! A VM started from another VM's full in-image snapshot (a fork, as
//! `vm clone --from-snapshot` makes one): vm.restore with source_url
//! `qcow2-image://PATH#NAME` on a created VM reads the VM state of
//! snapshot NAME from the VM-state area of the qcow2 image at PATH (the
//! first disk of the VM the snapshot was taken of) and builds the created
//! VM from it, paused. The created VM's own disks are left as they are:
//! they already hold the snapshot's disk contents (overlays on bases
//! extracted from it).
//!
//! The image is opened read-only and without a lock, since the VM that
//! owns it may run on: a snapshot's clusters are never written while the
//! snapshot exists (the owner's writes copy them first), and `vm` holds
//! the owner's store lock meanwhile, so no snapshot is deleted under the
//! reader. The state is untrusted as any image's is: read and checked by
//! [`super::image`] (bounded header, CRCs, the configuration, RAM ranges).

use std::path::PathBuf;

use vm_memory::GuestMemoryMmap;

use super::machine::{ConfigSummary, MachineState};
use super::StateError;

/// The scheme of vm.restore's source_url for a fork.
pub const URL_SCHEME: &str = "qcow2-image://";

/// Where a fork's state is: snapshot `snapshot` of the image at `image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkSource {
    /// The qcow2 image holding the state (absolute).
    pub image: PathBuf,
    /// The full snapshot's name.
    pub snapshot: String,
}

fn url_err(text: String) -> StateError {
    StateError::InImage(text)
}

/// Parses `qcow2-image://PATH#NAME` (NAME percent-encoded, so the last
/// `#` ends PATH); `None` for a URL of another scheme.
pub fn parse_url(url: &str) -> Result<Option<ForkSource>, StateError> {
    let Some(rest) = url.strip_prefix(URL_SCHEME) else {
        return Ok(None);
    };
    let (path, encoded) = rest.rsplit_once('#').ok_or_else(|| {
        url_err(format!(
            "'{URL_SCHEME}{}' names no snapshot: {URL_SCHEME}PATH#NAME",
            rest.chars().take(64).collect::<String>()
        ))
    })?;
    if !path.starts_with('/') {
        return Err(url_err(format!(
            "the image path of a {URL_SCHEME} URL must be absolute, not '{}'",
            path.chars().take(64).collect::<String>()
        )));
    }
    let snapshot = percent_decode(encoded)?;
    super::in_image::check_name(&snapshot)?;
    Ok(Some(ForkSource {
        image: PathBuf::from(path),
        snapshot,
    }))
}

fn percent_decode(text: &str) -> Result<String, StateError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let value = bytes
                .get(at + 1..at + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| url_err("a bad %-escape in the snapshot name".into()))?;
            out.push(value);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| url_err("the snapshot name is not UTF-8".into()))
}

/// Reads and checks the state of `source` for a VM configured as `vm`:
/// its machine, and its RAM in newly mapped guest memory, loaded lazily
/// ([`crate::lazy_ram`], the loader returned) when it can be.
pub fn read(
    source: &ForkSource,
    vm: ConfigSummary,
    seccomp: bool,
) -> crate::error::Result<(
    MachineState,
    GuestMemoryMmap,
    Option<crate::lazy_ram::LazyRam>,
)> {
    let path = &source.image;
    let image_err = |e: qcow::Error| url_err(format!("image '{}': {e}", path.display()));
    let storage = qcow::fs::open_storage(path, false).map_err(image_err)?;
    let image = qcow::image::Qcow2::open(storage, false, &qcow::fs::FileOpener::for_image(path))
        .map_err(image_err)?;
    let area = super::image::read_machine(&image, &source.snapshot, vm)?;
    let mem = crate::vm::map_guest_memory(vm.memory)?;
    let first = crate::lazy_ram::first_pages(&area.machine);
    let (lazy, _) = crate::lazy_ram::load(
        &image,
        &source.snapshot,
        area.ram,
        vm,
        &mem,
        false,
        seccomp,
        &first,
    )?;
    // The loader reads through its own map onto the file: this reader is
    // closed now, not when the fork ends.
    drop(image);
    Ok((area.machine, mem, lazy))
}

/// Gives each interface's restored state the MAC address its new
/// configuration has (a fork gets new ones): the device shows the new
/// address; a guest driver that read the old one keeps it until it reads
/// the device's configuration again.
pub fn set_macs(machine: &mut MachineState, macs: &[[u8; 6]]) {
    for (saved, mac) in machine.nets.iter_mut().zip(macs) {
        saved.mac = *mac;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn urls_round_trip_and_refusals() {
        let path = Path::new("/img/a#b.qcow2");
        for name in ["s1", "with%and#", "a b/c"] {
            let text = vmapi::fork_url(path, name);
            let parsed = parse_url(&text).unwrap().unwrap();
            assert_eq!(parsed.image, path, "{text}");
            assert_eq!(parsed.snapshot, name, "{text}");
        }
        assert_eq!(parse_url("qcow2:s1").unwrap(), None);
        assert_eq!(parse_url("file:///x").unwrap(), None);
        for bad in [
            "qcow2-image:///x.qcow2",
            "qcow2-image://rel.qcow2#s",
            "qcow2-image:///x.qcow2#",
            "qcow2-image:///x.qcow2#%4",
            "qcow2-image:///x.qcow2#%zz",
            "qcow2-image:///x.qcow2#%ff",
            "qcow2-image:///x.qcow2#a%0Ab",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
