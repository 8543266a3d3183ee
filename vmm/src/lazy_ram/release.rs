//! The replaced guest's RAM taken off the resume path: before a revert
//! loads RAM lazily, every page of guest RAM must be missing. Dropping
//! them in place (MADV_DONTNEED) frees every page before the guest may
//! resume, which costs about as much as the pages it frees. Instead, the
//! pages are moved to a new mapping with `mremap(MREMAP_DONTUNMAP)`
//! (Linux 5.7; on 5.7-5.12 private anonymous mappings only, which guest
//! RAM is): the kernel moves page tables, not pages, and leaves the
//! original range mapped and empty, at the same address, with its flags
//! (KVM's memory slot keeps pointing at it; the move invalidates KVM's
//! mappings of the range through its MMU notifier, as MADV_DONTNEED does).
//! The moved pages are unmapped later by the loader thread, a few MiB at a
//! time between the faults it serves ([`Detached::release_some`]).
//!
//! The two calls that need `unsafe` are here alone.

/// Pages of a replaced guest's RAM moved out of guest RAM, unmapped
/// piece by piece (and whatever is left, on drop).
#[derive(Debug)]
pub struct Detached {
    /// Start of what is still mapped.
    addr: usize,
    /// Bytes still mapped.
    len: usize,
}

impl Detached {
    /// Moves the pages of `[host, host + len)`, one whole private
    /// anonymous mapping the caller owns (guest RAM while no vCPU runs),
    /// to a new mapping, leaving the range mapped and empty: every page
    /// reads as zero (or faults to a userfaultfd registered later).
    pub fn detach(host: u64, len: u64) -> std::io::Result<Detached> {
        if len == 0 {
            return Ok(Detached { addr: 0, len: 0 });
        }
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "length"))?;
        // The system call itself, its fifth argument (`new_address`,
        // unused without MREMAP_FIXED) given as 0: through the C library's
        // variadic mremap, which passes no fifth argument, the VMM got
        // EINVAL here where the raw system call succeeds.
        // SAFETY: [host, host + len) is guest RAM, one live private
        // anonymous mapping owned by the VM (the caller's contract); the
        // kernel moves its pages to a new mapping it chooses (MAYMOVE
        // without FIXED never replaces another mapping) and keeps the
        // range itself mapped, so no pointer into it dangles. Nothing
        // holds a Rust reference into guest RAM (it is accessed through
        // volatile copies), and no vCPU runs.
        let new = unsafe {
            libc::syscall(
                libc::SYS_mremap,
                host as usize,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP,
                0usize,
            )
        };
        if new == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Detached {
            addr: new as usize,
            len,
        })
    }

    /// Whether everything is released.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps at most `chunk` bytes (a multiple of the page size) from
    /// the start of what is left.
    pub fn release_some(&mut self, chunk: usize) {
        let n = chunk.min(self.len);
        if n == 0 {
            return;
        }
        // SAFETY: [addr, addr + n) is the start of the mapping `detach`
        // made, which only this value knows of and no one reads; it is
        // page-aligned (mremap returned `addr`, `chunk` is whole pages).
        let rc = unsafe { libc::munmap(self.addr as *mut libc::c_void, n) };
        if rc != 0 {
            // Left mapped: at worst memory held until the process ends.
            eprintln!(
                "vmm: releasing the replaced guest's RAM: {}",
                std::io::Error::last_os_error()
            );
            self.len = 0;
            return;
        }
        self.addr += n;
        self.len -= n;
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.release_some(self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn detached_ram_reads_as_zero_at_the_same_address() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        mem.write_slice(&[7u8; 8192], GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"end", GuestAddress((8 << 20) - 3))
            .unwrap();
        let region = mem.iter().next().unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let mut gone = Detached::detach(host, region.len()).unwrap();
        let mut back = vec![1u8; 8 << 20];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        // The same mapping takes data again.
        mem.write_slice(b"new", GuestAddress(0x1000)).unwrap();
        let mut three = [0u8; 3];
        mem.read_slice(&mut three, GuestAddress(0x1000)).unwrap();
        assert_eq!(&three, b"new");
        gone.release_some(4 << 20);
        assert!(!gone.is_empty());
        gone.release_some(4 << 20);
        assert!(gone.is_empty());
    }
}
