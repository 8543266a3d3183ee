//! The guest-physical memory map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_0520  IDT (empty)
//! 0x0000_7000  boot_params    0x0000_8ff0  initial stack pointer
//! 0x0000_9000  PML4           0x0000_a000  PDPT
//! 0x0000_b000  4 page directories (identity map of 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 1 MiB: reserved (ACPI tables from 0xe_0000, the
//!              VM generation ID at 0xf_f000)
//! 0x0010_0000  kernel (bzImage protected-mode part; ELF at its own address)
//! ...          RAM up to min(memory, 3 GiB); the initrd at its top
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices at 0xd000_0000,
//!              the ACPI GED at 0xfeb0_0000, IOAPIC 0xfec0_0000,
//!              LAPIC 0xfee0_0000
//! 0x1_0000_0000  the rest of RAM, if any
//! ```

/// The GDT.
pub const GDT_START: u64 = 0x500;
/// The (empty) IDT.
pub const IDT_START: u64 = 0x520;
/// Linux's zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area (not RAM for the guest).
pub const EBDA_START: u64 = 0x9fc00;
/// The VM generation ID (16 bytes, `devices::vmgenid`), on a page of
/// its own at the top of the BIOS area, above the ACPI tables.
pub const VMGENID_START: u64 = 0x000f_f000;
/// Where high memory (and a bzImage's kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Bytes of MMIO space per virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device (the next ones follow).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Most virtio-mmio disks (GSIs 5..=22 of the IOAPIC; 23 is the GED's).
pub const MAX_DISKS: usize = 18;
/// The ACPI Generic Event Device's event register (one 32-bit word).
pub const GED_START: u64 = 0xfeb0_0000;
/// Bytes of the GED's register window.
pub const GED_SIZE: u64 = 4;
/// GSI of the GED's interrupt.
pub const GED_GSI: u32 = 23;
/// The hardware-reduced ACPI sleep control register (FADT's
/// SLEEP_CONTROL_REG), an I/O port.
pub const SLEEP_CONTROL_PORT: u64 = 0x600;
/// The sleep status register (FADT's SLEEP_STATUS_REG), the next port.
pub const SLEEP_STATUS_PORT: u64 = 0x601;
/// GSI of the 8250 serial port.
pub const SERIAL_GSI: u32 = 4;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The LAPIC's MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages just below the IOAPIC area, outside RAM).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Guest RAM ranges (start, length) for `memory` bytes of RAM.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_GAP_START {
        vec![(0, memory)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, memory - MMIO_GAP_START)]
    }
}

/// The MMIO base of virtio-mmio device `index`.
pub fn virtio_mmio_base(index: usize) -> u64 {
    VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert!(virtio_mmio_base(MAX_DISKS) < GED_START && GED_START + GED_SIZE <= IOAPIC_START);
        assert!(VIRTIO_FIRST_GSI + MAX_DISKS as u32 <= GED_GSI);
    }
}
