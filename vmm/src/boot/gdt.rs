//! The GDT the vCPUs start with: Linux's boot protocol wants a flat 64-bit
//! code segment at selector 0x10 (`__BOOT_CS`) and a flat data segment at
//! 0x18 (`__BOOT_DS`); a TSS descriptor at 0x20 keeps VMX happy.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x20;

/// Encodes a segment descriptor from flags (type, S, DPL, P in bits 0-7;
/// AVL, L, D/B, G in bits 12-15), base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The table: null, null, code, data, TSS.
pub fn table() -> [u64; 5] {
    [
        0,
        0,
        descriptor(0xa09b, 0, 0xfffff), // 64-bit code, present, ring 0, 4 KiB granular
        descriptor(0xc093, 0, 0xfffff), // data, read/write, present, 32-bit, 4 KiB granular
        descriptor(0x808b, 0, 0xfffff), // busy TSS
    ]
}

/// The `kvm_segment` KVM wants for a descriptor of the table.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granular = (entry >> 55) & 1;
    // KVM takes the limit in bytes.
    let limit = if granular == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_64_bit() {
        let t = table();
        let cs = segment(t[(CODE_SELECTOR / 8) as usize], CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.g, cs.type_),
            (0, 0xffff_ffff, 1, 0, 1, 0xb)
        );
        assert_eq!((cs.present, cs.s, cs.dpl), (1, 1, 0));
        let ds = segment(t[(DATA_SELECTOR / 8) as usize], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        let tss = segment(t[(TSS_SELECTOR / 8) as usize], TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
        assert_eq!(descriptor(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
