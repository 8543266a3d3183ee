//! Lazy guest RAM from a file: vm.restore of Cloud Hypervisor's layout
//! (`file://DIR`, [`crate::state::snapshot`]) keeps its RAM records in
//! `memory-ranges`, the same record stream a snapshot's VM-state area
//! holds after its machine records. So the same index
//! ([`super::index::build`]) and loader serve it, reading the file
//! instead of the image: the file is opened once, before the guest
//! resumes, and the loader keeps that descriptor (a later snapshot
//! into the same folder renames a new file into place and leaves this
//! one's bytes alone). Everything read is checked as from an image:
//! every header before resume, every record's CRC before its pages are
//! filled, and a record that changed since it was indexed stops the VM.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::index::{self, StreamSource};
use super::{LazyRam, Registered, Source};
use crate::state::machine::ConfigSummary;
use crate::state::StateError;

/// A RAM stream held whole by a file (`memory-ranges`).
pub struct FileSource {
    file: File,
    /// The file's name, for messages.
    name: String,
}

impl FileSource {
    /// Opens `path` for reading; also returns its length in bytes.
    pub fn open(path: &Path) -> Result<(FileSource, u64), StateError> {
        let name = path.display().to_string();
        let read_err = |e: std::io::Error| StateError::Read(format!("{name}: {e}"));
        let file = File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        Ok((FileSource { file, name }, len))
    }
}

impl StreamSource for FileSource {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError> {
        self.file
            .read_exact_at(buf, pos)
            .map_err(|e| StateError::Read(format!("{} at byte {pos}: {e}", self.name)))
    }
}

/// Guest RAM `mem` (freshly mapped, all zero) of a VM configured as `vm`,
/// set up from the `memory-ranges` file of the snapshot folder `dir`:
/// lazily when [`super::wanted`] and userfaultfd works, else read now
/// ([`crate::state::snapshot::read_memory`]). Returns the loader if lazy,
/// and the bytes of RAM the stream holds.
pub fn load(
    dir: &Path,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
    seccomp: bool,
) -> Result<(Option<LazyRam>, u64), StateError> {
    let read_now = || crate::state::snapshot::read_memory(dir, vm, mem);
    if !super::wanted() {
        return Ok((None, read_now()?));
    }
    let (source, len) = FileSource::open(&dir.join(crate::state::snapshot::MEMORY_FILE))?;
    let (segments, bytes) = index::build(&source, 0, len, vm)?;
    let registered = match Registered::new(mem) {
        Ok(registered) => registered,
        Err(e) => {
            eprintln!("vmm: {e}; loading guest RAM now");
            return Ok((None, read_now()?));
        }
    };
    let source: Source = Box::new(source);
    let lazy = registered.start(segments, source, seccomp, dir.display().to_string())?;
    Ok((Some(lazy), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn a_memory_file_loads_lazily_as_it_was_saved() {
        let size = 16u64 << 20;
        let summary = crate::lazy_ram::one_cpu_summary(size);
        let saved = crate::vm::map_guest_memory(size).unwrap();
        for (i, addr) in [0x3000u64, 0x50_0000, size - 8192].iter().enumerate() {
            saved
                .write_slice(&[i as u8 + 7; 8192], GuestAddress(*addr))
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::state::snapshot::MEMORY_FILE);
        let mut stream = Vec::new();
        crate::state::memory::save(&saved, summary, &mut stream).unwrap();
        std::fs::write(&path, &stream).unwrap();

        let mem = crate::vm::map_guest_memory(size).unwrap();
        let (lazy, bytes) = load(dir.path(), summary, &mem, false).unwrap();
        assert_eq!(bytes, 3 * 8192);
        if lazy.is_none() {
            eprintln!("loaded eagerly (userfaultfd unavailable or VMM_EAGER_RAM set)");
        }
        // A page read before the loader reaches it waits for it.
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(size - 4096))
            .unwrap();
        assert_eq!(page, [9u8; 4096]);
        if let Some(lazy) = &lazy {
            lazy.settle();
        }
        let (mut a, mut b) = (vec![0u8; size as usize], vec![0u8; size as usize]);
        saved.read_slice(&mut a, GuestAddress(0)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);

        // A file for another configuration is refused before anything
        // is registered.
        let other = ConfigSummary {
            memory: 32 << 20,
            ..summary
        };
        let fresh = crate::vm::map_guest_memory(32 << 20).unwrap();
        let Err(err) = load(dir.path(), other, &fresh, false) else {
            panic!("a file for another configuration was loaded");
        };
        let err = err.to_string();
        assert!(err.contains("another configuration"), "{err}");
    }
}
