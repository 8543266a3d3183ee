//! The identity map the vCPUs start with: the first 4 GiB in 2 MiB pages
//! (so the IOAPIC and LAPIC are mapped too), one PML4 entry, one PDPT with
//! four entries, four page directories.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::{PDE_START, PDPTE_START, PML4_START};

const PRESENT_WRITABLE: u64 = 0x3;
const LARGE_PAGE: u64 = 0x80;

/// Writes the page tables; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<u64> {
    let write = |value: u64, at: u64| {
        mem.write_obj(value, GuestAddress(at))
            .map_err(|e| Error::Memory(format!("writing page tables at {at:#x}: {e}")))
    };
    write(PDPTE_START | PRESENT_WRITABLE, PML4_START)?;
    for gib in 0..4u64 {
        let pd = PDE_START + gib * 0x1000;
        write(pd | PRESENT_WRITABLE, PDPTE_START + gib * 8)?;
        for entry in 0..512u64 {
            let frame = (gib << 30) | (entry << 21);
            write(frame | PRESENT_WRITABLE | LARGE_PAGE, pd + entry * 8)?;
        }
    }
    Ok(PML4_START)
}

/// Translates a guest-virtual address through 4-level page tables rooted
/// at `cr3` (for reporting where a guest stopped); `None` if unmapped.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<u64> {
    let read = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).ok();
    let mask = 0x000f_ffff_ffff_f000u64;
    let mut table = cr3 & mask;
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let entry = read(table + ((virt >> shift) & 0x1ff) * 8)?;
        if entry & 1 == 0 {
            return None;
        }
        if level > 1 && level < 4 && entry & LARGE_PAGE != 0 {
            let page = 1u64 << shift;
            return Some((entry & mask & !(page - 1)) | (virt & (page - 1)));
        }
        table = entry & mask;
    }
    Some(table | (virt & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_translates_to_itself() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for virt in [0u64, 0x7000, 0x20_1234, 0xfee0_00b0, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, virt), Some(virt));
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }
}
