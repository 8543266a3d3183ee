//! Reading Linux's `struct boot_params` (the zero page) that the VMM passes in
//! RSI: the command line and the e820 memory map.

/// Offset of `e820_entries` (u8).
const E820_ENTRIES_OFFSET: usize = 0x1e8;
/// Offset of `hdr.cmd_line_ptr` (u32).
const CMD_LINE_PTR_OFFSET: usize = 0x228;
/// Offset of `ext_cmd_line_ptr` (u32, bits 32..63 of the command line address).
const EXT_CMD_LINE_PTR_OFFSET: usize = 0x0c8;
/// Offset of `e820_table` (struct boot_e820_entry, 20 bytes each, packed).
const E820_TABLE_OFFSET: usize = 0x2d0;
/// Size of one `boot_e820_entry`.
const E820_ENTRY_SIZE: usize = 20;
/// Room in the zero page for e820 entries (E820_MAX_ENTRIES_ZEROPAGE).
const E820_MAX_ENTRIES: usize = 128;
/// Longest command line we read.
pub const CMDLINE_MAX: usize = 4096;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One entry of the e820 map.
#[derive(Clone, Copy)]
pub struct E820Entry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// Kind of range (1 = RAM, 2 = reserved, ...).
    pub kind: u32,
}

/// The zero page at a guest-physical (identity-mapped) address.
pub struct BootParams {
    base: usize,
}

impl BootParams {
    /// Wraps the zero page at `base`.
    ///
    /// # Safety
    /// `base` must point at 4 KiB of readable, identity-mapped memory that
    /// stays unchanged while the guest runs.
    pub unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: offset < 4096, inside the zero page (see `new`).
        unsafe { ((self.base + offset) as *const u8).read_volatile() }
    }

    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as for read_u8; unaligned reads are fine on x86.
        unsafe { ((self.base + offset) as *const u32).read_unaligned() }
    }

    fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: as for read_u8.
        unsafe { ((self.base + offset) as *const u64).read_unaligned() }
    }

    /// The command line, up to its NUL (at most `CMDLINE_MAX` bytes), or an
    /// empty slice if the VMM gave none.
    pub fn cmdline(&self) -> &'static [u8] {
        let address = u64::from(self.read_u32(CMD_LINE_PTR_OFFSET))
            | (u64::from(self.read_u32(EXT_CMD_LINE_PTR_OFFSET)) << 32);
        if address == 0 || address >= 1 << 32 {
            return &[];
        }
        let start = address as usize;
        let mut len = 0;
        // SAFETY: the VMM put a NUL-terminated string there, inside RAM that
        // the identity map covers; we stop at CMDLINE_MAX regardless.
        while len < CMDLINE_MAX && unsafe { ((start + len) as *const u8).read_volatile() } != 0 {
            len += 1;
        }
        // SAFETY: the `len` bytes just read, never written while we run.
        unsafe { core::slice::from_raw_parts(start as *const u8, len) }
    }

    /// Number of e820 entries (bounded by the zero page's room).
    pub fn e820_count(&self) -> usize {
        usize::from(self.read_u8(E820_ENTRIES_OFFSET)).min(E820_MAX_ENTRIES)
    }

    /// The e820 entry `index` (< `e820_count()`).
    pub fn e820(&self, index: usize) -> E820Entry {
        let offset = E820_TABLE_OFFSET + index.min(E820_MAX_ENTRIES - 1) * E820_ENTRY_SIZE;
        E820Entry {
            addr: self.read_u64(offset),
            size: self.read_u64(offset + 8),
            kind: self.read_u32(offset + 16),
        }
    }
}
