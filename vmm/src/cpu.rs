//! The state each vCPU starts in: CPUID from KVM's supported set with the
//! topology filled in, the MSRs a Linux guest expects, 64-bit long mode as
//! the Linux boot protocol enters it (boot vCPU) and the LAPIC's LINT pins
//! wired as a PC's are.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::boot::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::error::{kvm, Error, Result};
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, ZERO_PAGE_START};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_MP: u64 = 0x2;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_NE: u64 = 0x20;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const X86_CR4_OSFXSR: u64 = 0x200;
const X86_CR4_OSXMMEXCPT: u64 = 0x400;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Register of a CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}

/// Features `--cpuid-mask` can hide: name, leaf, subleaf, register, bit.
const MASKABLE: &[(&str, u32, u32, Reg, u32)] = &[
    ("sse3", 1, 0, Reg::Ecx, 0),
    ("pclmulqdq", 1, 0, Reg::Ecx, 1),
    ("ssse3", 1, 0, Reg::Ecx, 9),
    ("fma", 1, 0, Reg::Ecx, 12),
    ("cx16", 1, 0, Reg::Ecx, 13),
    ("sse4_1", 1, 0, Reg::Ecx, 19),
    ("sse4_2", 1, 0, Reg::Ecx, 20),
    ("movbe", 1, 0, Reg::Ecx, 22),
    ("popcnt", 1, 0, Reg::Ecx, 23),
    ("aes", 1, 0, Reg::Ecx, 25),
    ("xsave", 1, 0, Reg::Ecx, 26),
    ("osxsave", 1, 0, Reg::Ecx, 27),
    ("avx", 1, 0, Reg::Ecx, 28),
    ("f16c", 1, 0, Reg::Ecx, 29),
    ("rdrand", 1, 0, Reg::Ecx, 30),
    ("bmi1", 7, 0, Reg::Ebx, 3),
    ("avx2", 7, 0, Reg::Ebx, 5),
    ("bmi2", 7, 0, Reg::Ebx, 8),
    ("avx512f", 7, 0, Reg::Ebx, 16),
    ("rdseed", 7, 0, Reg::Ebx, 18),
    ("adx", 7, 0, Reg::Ebx, 19),
    ("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    ("lzcnt", 0x8000_0001, 0, Reg::Ecx, 5),
];

/// `--cpuid-mask emulated`: what an instruction-emulating nested
/// hypervisor cannot run in guest ring 0 (see the README).
pub const EMULATED_PRESET: &[&str] = &[
    "sse3",
    "pclmulqdq",
    "ssse3",
    "fma",
    "cx16",
    "sse4_1",
    "sse4_2",
    "movbe",
    "popcnt",
    "aes",
    "xsave",
    "osxsave",
    "avx",
    "f16c",
    "rdrand",
    "bmi1",
    "avx2",
    "bmi2",
    "avx512f",
    "rdseed",
    "adx",
    "rdtscp",
    "lzcnt",
];

/// Expands and checks a `--cpuid-mask` list (feature names, or the preset
/// `emulated`).
pub fn parse_cpuid_mask(list: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "emulated" {
            names.extend(EMULATED_PRESET.iter().map(|n| n.to_string()));
        } else if MASKABLE.iter().any(|m| m.0 == name) {
            names.push(name.to_string());
        } else {
            return Err(Error::InvalidOption {
                option: "--cpuid-mask",
                value: name.to_string(),
                reason: format!(
                    "unknown feature; known: emulated, {}",
                    MASKABLE.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(names)
}

/// Clears the CPUID bits of the named features.
pub fn mask_features(cpuid: &mut CpuId, names: &[String]) {
    for e in cpuid.as_mut_slice() {
        for &(name, leaf, subleaf, reg, bit) in MASKABLE {
            if e.function == leaf && e.index == subleaf && names.iter().any(|n| n == name) {
                match reg {
                    Reg::Ebx => e.ebx &= !(1 << bit),
                    Reg::Ecx => e.ecx &= !(1 << bit),
                    Reg::Edx => e.edx &= !(1 << bit),
                }
            }
        }
    }
}

/// CPUID as KVM supports it, with the APIC id, the vCPU count and the
/// hypervisor bit filled in for vCPU `id` of `count`.
pub fn cpuid(kvm_fd: &Kvm, id: u32, count: u32) -> Result<CpuId> {
    let mut cpuid = kvm_fd
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC id, logical processors, CLFLUSH line size.
                e.ebx = (id << 24) | ((count & 0xff) << 16) | (8 << 8);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is valid
                }
            }
            4 => {
                // Cores per package, minus one, in bits 31:26.
                e.eax = (e.eax & 0x03ff_ffff) | ((count.saturating_sub(1) & 0x3f) << 26);
            }
            0xb => {
                // x2APIC topology: one thread per core, `count` cores.
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = 32 - count.next_power_of_two().leading_zeros() - 1;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

/// Sets CPUID (without the `hidden` features), MSRs and the LAPIC of vCPU
/// `id` of `count`; for the boot vCPU also the registers of the 64-bit
/// entry at `entry`.
pub fn configure(
    kvm_fd: &Kvm,
    vcpu: &VcpuFd,
    (id, count): (u32, u32),
    entry: u64,
    hidden: &[String],
) -> Result<()> {
    let mut table = cpuid(kvm_fd, id, count)?;
    mask_features(&mut table, hidden);
    vcpu.set_cpuid2(&table).map_err(kvm("KVM_SET_CPUID2"))?;
    set_msrs(vcpu)?;
    set_lint(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    if id == 0 {
        set_long_mode(vcpu, entry)?;
    }
    Ok(())
}

fn set_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ];
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::GuestFault(format!("building the MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(Error::GuestFault(format!(
            "KVM set {set} of {} MSRs (MSR {:#x} refused)",
            entries.len(),
            entries[set].index
        )));
    }
    Ok(())
}

/// LINT0 delivers the legacy PIC's ExtINT, LINT1 NMIs, as on a PC.
fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[offset..offset + 4]
            .iter()
            .map(|&b| b as u8)
            .collect();
        let old = u32::from_le_bytes(bytes.try_into().expect("four bytes"));
        let new = (old & !0x700) | (mode << 8);
        for (i, b) in new.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

/// Long mode with paging on, flat segments from the GDT, interrupts off,
/// RSI at boot_params.
fn set_long_mode(vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let table = gdt::table();
    let code = gdt::segment(table[(CODE_SELECTOR / 8) as usize], CODE_SELECTOR);
    let data = gdt::segment(table[(DATA_SELECTOR / 8) as usize], DATA_SELECTOR);
    let tss = gdt::segment(table[(TSS_SELECTOR / 8) as usize], TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_clear_exactly_their_bits() {
        let names = parse_cpuid_mask("popcnt,rdtscp").unwrap();
        let mut table = CpuId::from_entries(&[
            kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                ecx: u32::MAX,
                edx: u32::MAX,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x8000_0001,
                edx: u32::MAX,
                ..Default::default()
            },
        ])
        .unwrap();
        mask_features(&mut table, &names);
        let e = table.as_slice();
        assert_eq!(e[0].ecx, !(1 << 23));
        assert_eq!(e[0].edx, u32::MAX);
        assert_eq!(e[1].edx, !(1 << 27));
        assert!(parse_cpuid_mask("emulated").unwrap().len() > 20);
        assert!(parse_cpuid_mask("popcnt,frobnicate").is_err());
    }
}
