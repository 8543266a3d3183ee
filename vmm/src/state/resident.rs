//! Which pages of guest RAM the host has ever backed: a page the guest
//! never touched is not resident in our anonymous mapping and reads as
//! zero, so a snapshot skips it without reading it (reading it would fault
//! in a page per 4 KiB, which costs most of a snapshot of a large, mostly
//! idle guest on a nested host). The one `unsafe` call, mincore(2), reads
//! the mapping's page tables, not its contents.

use vm_memory::{GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

/// The host's page size the answer is in.
pub const HOST_PAGE: u64 = 4096;

/// One flag per 4 KiB page of `region`: whether the host backs it. `None`
/// when the kernel cannot say (then every page must be read).
pub fn resident_pages(region: &GuestRegionMmap) -> Option<Vec<bool>> {
    let host = region.get_host_address(MemoryRegionAddress(0)).ok()?;
    let len = region.len();
    if !(host as usize).is_multiple_of(HOST_PAGE as usize) {
        return None;
    }
    let pages = len.div_ceil(HOST_PAGE) as usize;
    let mut flags = vec![0u8; pages];
    // SAFETY: [host, host + len) is one live mapping owned by `region`
    // (page-aligned, checked above); mincore only reads the page tables of
    // that range and writes `pages` bytes into `flags`, which has exactly
    // that many. Guest memory is neither read nor written.
    let rc = unsafe { libc::mincore(host.cast(), len as usize, flags.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    Some(flags.into_iter().map(|f| f & 1 != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn untouched_pages_are_not_resident() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        mem.write_slice(b"x", GuestAddress(5 * HOST_PAGE)).unwrap();
        let region = mem.iter().next().unwrap();
        let flags = resident_pages(region).expect("mincore");
        assert_eq!(flags.len(), (64 << 20) / HOST_PAGE as usize);
        assert!(flags[5]);
        // Most of 64 MiB was never touched.
        assert!(flags.iter().filter(|&&f| f).count() < flags.len() / 2);
    }
}
