//! Which pages of guest RAM the host has ever backed: a page the guest
//! never touched is not resident in our anonymous mapping and reads as
//! zero, so a snapshot skips it without reading it (reading it would fault
//! in a page per 4 KiB, which costs most of a snapshot of a large, mostly
//! idle guest on a nested host). The one `unsafe` call, mincore(2), reads
//! the mapping's page tables, not its contents.

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

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

/// Gives `[start, start + len)` of guest RAM back to the kernel
/// (madvise MADV_DONTNEED): the pages of our private anonymous mapping
/// then read as zero, and cost nothing until touched again. The range
/// must lie in one region and be page-aligned.
pub fn discard(mem: &GuestMemoryMmap, start: GuestAddress, len: u64) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    if !start.0.is_multiple_of(HOST_PAGE) || !len.is_multiple_of(HOST_PAGE) {
        return Err(bad("range not page-aligned"));
    }
    let (region, offset) = mem
        .to_region_addr(start)
        .ok_or_else(|| bad("range outside guest RAM"))?;
    if offset
        .0
        .checked_add(len)
        .is_none_or(|end| end > region.len())
    {
        return Err(bad("range crosses the end of its RAM region"));
    }
    let host = region
        .get_host_address(offset)
        .map_err(|e| bad(&e.to_string()))?;
    // SAFETY: [host, host + len) lies inside one live private anonymous
    // mapping owned by `region` (checked above), page-aligned as the
    // mapping is; MADV_DONTNEED only drops its pages, which then read as
    // zero. No Rust reference into guest RAM exists (it is accessed
    // through volatile copies), and the caller owns the VM whose RAM this
    // is while no vCPU runs.
    let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

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
