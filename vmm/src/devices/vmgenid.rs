//! The VM generation ID, as QEMU's `vmgenid` and Firecracker's VMGenID
//! device have it: 16 random bytes in guest memory that the VMM owns (at
//! [`VMGENID_START`], in the BIOS area the e820 map leaves out of RAM),
//! which the DSDT's `\_SB.VGEN` device (`acpi::vmgenid_device`) points
//! at. The VMM writes a new ID whenever the guest's RAM is loaded from a
//! saved state that may run more than once (a restore, a revert, a fork),
//! never on a migration (the same VM goes on elsewhere), and raises the
//! GED's generation event, which `_EVT` turns into `Notify(\_SB.VGEN,
//! 0x80)`: Linux's `vmgenid` driver then reads the ID and reseeds its
//! random number generator at once.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
pub use crate::layout::VMGENID_START;

/// Bytes of the ID.
pub const VMGENID_SIZE: usize = 16;

/// A generation ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationId(pub [u8; VMGENID_SIZE]);

impl GenerationId {
    /// A new random ID from the kernel's random number generator.
    pub fn random() -> Result<GenerationId> {
        let mut bytes = [0u8; VMGENID_SIZE];
        let mut filled = 0;
        while filled < VMGENID_SIZE {
            let rest = &mut bytes[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into
            // `rest`, a live, exclusively borrowed buffer of that length.
            let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if got < 0 {
                let source = std::io::Error::last_os_error();
                if source.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Io {
                    what: "getrandom for a VM generation ID".into(),
                    source,
                });
            }
            filled += got as usize;
        }
        Ok(GenerationId(bytes))
    }

    /// Writes the ID at [`VMGENID_START`] in `mem`.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<()> {
        mem.write_slice(&self.0, GuestAddress(VMGENID_START))
            .map_err(|e| Error::Memory(format!("writing the VM generation ID: {e}")))
    }

    /// The ID at [`VMGENID_START`] in `mem`.
    pub fn read(mem: &GuestMemoryMmap) -> Result<GenerationId> {
        let mut bytes = [0u8; VMGENID_SIZE];
        mem.read_slice(&mut bytes, GuestAddress(VMGENID_START))
            .map_err(|e| Error::Memory(format!("reading the VM generation ID: {e}")))?;
        Ok(GenerationId(bytes))
    }
}

impl std::fmt::Display for GenerationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_land_at_their_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let a = GenerationId::random().unwrap();
        let b = GenerationId::random().unwrap();
        assert_ne!(a, b);
        a.write(&mem).unwrap();
        assert_eq!(GenerationId::read(&mem).unwrap(), a);
        assert_eq!(a.to_string().len(), 32);
    }

    // 8-byte aligned (the ACPI spec asks it), out of RAM (between the EBDA
    // and 1 MiB, which the e820 map leaves out).
    const _: () = assert!(VMGENID_START.is_multiple_of(8));
    const _: () = assert!(VMGENID_START >= crate::layout::EBDA_START);
    const _: () = assert!(VMGENID_START + VMGENID_SIZE as u64 <= crate::layout::HIMEM_START);
}
