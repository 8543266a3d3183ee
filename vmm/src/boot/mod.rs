//! Putting a guest into memory: the kernel (ELF vmlinux, or bzImage whose
//! 64-bit entry is 0x200 past its protected-mode code), the initrd at the
//! top of low RAM, the command line, `boot_params` with the e820 map, the
//! GDT and the identity-mapping page tables.

pub mod gdt;
pub mod paging;

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, GDT_START, HIMEM_START, IDT_START, MMIO_GAP_END,
    MMIO_GAP_START, ZERO_PAGE_START,
};

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// "HdrS": boot_params.hdr.header.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// boot_params.hdr.boot_flag.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// An undefined boot loader id (0xff), as other VMMs use.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Where a bzImage's 64-bit entry point is, past its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// What the vCPUs need from the loaded guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Where the boot vCPU starts, in 64-bit mode.
    pub entry: u64,
    /// The e820 map written into boot_params.
    pub e820: [(u64, u64); 3],
    /// Entries of `e820` in use.
    pub e820_len: usize,
}

/// The e820 RAM map for `memory` bytes: below the EBDA, 1 MiB up to the
/// MMIO gap (or the end), and above 4 GiB if there is more.
pub fn e820_map(memory: u64) -> Vec<(u64, u64)> {
    let low_end = memory.min(MMIO_GAP_START);
    let mut map = vec![(0, EBDA_START), (HIMEM_START, low_end - HIMEM_START)];
    if memory > MMIO_GAP_START {
        map.push((MMIO_GAP_END, memory - MMIO_GAP_START));
    }
    map
}

fn kernel_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Kernel {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Loads the kernel; returns the entry point, the end of what was loaded
/// and the bzImage setup header if it was one.
fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<(u64, u64, Option<setup_header>)> {
    let mut file = File::open(path).map_err(|e| kernel_err(path, e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| kernel_err(path, e.to_string()))?
        .len();
    if len == 0 {
        return Err(kernel_err(path, "the file is empty"));
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut file, &mut magic)
        .map_err(|_| kernel_err(path, "not an ELF vmlinux or a bzImage (too short)"))?;
    std::io::Seek::rewind(&mut file).map_err(|e| kernel_err(path, e.to_string()))?;
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            kernel_err(
                path,
                format!("ELF kernel does not load ({e}); does it fit in guest memory?"),
            )
        })?;
        Ok((r.kernel_load.0, r.kernel_end, None))
    } else {
        let r =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
                kernel_err(
                    path,
                    format!(
                        "not an ELF vmlinux, and not a bzImage that fits in guest memory ({e})"
                    ),
                )
            })?;
        Ok((
            r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            r.kernel_end,
            r.setup_header,
        ))
    }
}

/// Loads the initrd at the top of low RAM (below `addr_max`), above
/// `kernel_end`; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    memory: u64,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64)> {
    let err = |reason: String| Error::Initrd {
        path: path.display().to_string(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let top = memory.min(MMIO_GAP_START).min(addr_max.saturating_add(1));
    let start = top
        .checked_sub(size)
        .map(|s| s & !0xfff)
        .filter(|&s| s >= kernel_end.max(HIMEM_START))
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit between the kernel's end ({kernel_end:#x}) and {top:#x}"
            ))
        })?;
    mem.read_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(|e| err(format!("reading into guest memory: {e}")))?;
    Ok((start, size))
}

/// Loads kernel, initrd and command line and writes boot_params, GDT, IDT
/// and page tables.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    memory: u64,
) -> Result<Loaded> {
    let (entry, kernel_end, header) = load_kernel(mem, kernel)?;

    let mut line = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Memory(e.to_string()))?;
    line.insert_str(cmdline).map_err(|e| Error::InvalidOption {
        option: "--cmdline",
        value: cmdline.chars().take(80).collect(),
        reason: format!("{e} (at most {} bytes)", CMDLINE_MAX_SIZE - 1),
    })?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| Error::Memory(format!("writing the command line: {e}")))?;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(path) = initrd {
        let addr_max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff, // the boot protocol's default
            max => u64::from(max),
        };
        let (start, size) = load_initrd(mem, path, memory, kernel_end, addr_max)?;
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(memory);
    let mut e820 = [(0u64, 0u64); 3];
    for (i, &(addr, size)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        e820[i] = (addr, size);
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| Error::Memory(format!("writing boot_params: {e}")))?;

    for (i, entry) in gdt::table().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(|e| Error::Memory(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| Error::Memory(format!("writing the IDT: {e}")))?;
    paging::write_identity_map(mem)?;
    Ok(Loaded {
        entry,
        e820,
        e820_len: map.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_maps() {
        assert_eq!(
            e820_map(128 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (128 << 20) - HIMEM_START)]
        );
        assert_eq!(e820_map(5 << 30)[2], (4 << 30, 2 << 30));
    }

    #[test]
    fn garbage_kernels_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("short", vec![1, 2]),
            ("garbage", vec![0x55; 8192]),
            ("elf-header-only", b"\x7fELF\x02\x01\x01".to_vec()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            let err = load(&mem, &p, None, "console=ttyS0", 32 << 20).unwrap_err();
            assert!(
                err.to_string().contains("cannot load kernel"),
                "{name}: {err}"
            );
        }
        let err = load(&mem, &dir.path().join("missing"), None, "", 32 << 20).unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
    }
}
