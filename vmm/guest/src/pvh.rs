//! A second way in, for booting under QEMU's microvm (benchmarks, and testing
//! the guest without our VMM): the Xen PVH entry. QEMU finds it through an
//! ELF note and enters it in 32-bit protected mode, paging off, with EBX =
//! the `hvm_start_info`. The stub builds an identity map of 4 GiB (2 MiB
//! pages), enters long mode with the same selectors our VMM uses (CS 0x10,
//! data 0x18), turns `hvm_start_info` into a Linux zero page, and joins the
//! normal 64-bit entry with RSI pointing at it. Our VMM enters at `e_entry`
//! and never runs this code.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// `hvm_start_info.magic`.
const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: usize = 24;
/// e820 entries the zero page holds.
const E820_MAX_ENTRIES: usize = 128;

/// Page tables (PML4, PDPT, 4 page directories) and the zero page, outside
/// .bss so that `_start` zeroing .bss keeps them.
#[repr(C, align(4096))]
struct PvhPages([u8; 7 * 4096]);

#[no_mangle]
#[link_section = ".bss.guest_pvh"]
static mut GUEST_PVH_PAGES: PvhPages = PvhPages([0; 7 * 4096]);

/// How the guest was entered: `ENTERED_AT_ELF_ENTRY` (the value in the
/// image, so in .data, which `_start` does not clear) or `ENTERED_VIA_PVH`.
static ENTRY_KIND: AtomicU32 = AtomicU32::new(ENTERED_AT_ELF_ENTRY);
const ENTERED_AT_ELF_ENTRY: u32 = 1;
const ENTERED_VIA_PVH: u32 = 2;

/// Whether QEMU entered us through the PVH note (so QEMU's debug-exit port
/// is the way out).
pub fn booted_via_pvh() -> bool {
    ENTRY_KIND.load(Ordering::SeqCst) == ENTERED_VIA_PVH
}

/// Offset of the zero page inside `GUEST_PVH_PAGES`.
const ZERO_PAGE_OFFSET: usize = 6 * 4096;

global_asm!(
    r#"
    .pushsection .note.pvh,"a",@note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long guest_pvh_start
    .balign 4
    .popsection

    .pushsection .text.pvh,"ax"
    .code32
    .global guest_pvh_start
guest_pvh_start:
    cli
    cld
    movl %ebx, %esi

    movl $GUEST_PVH_PAGES, %edi
    xorl %eax, %eax
    movl $(6 * 1024), %ecx
    rep stosl

    movl $GUEST_PVH_PAGES, %edi
    leal 0x1003(%edi), %eax
    movl %eax, (%edi)

    leal 0x1000(%edi), %edi
    leal 0x1003(%edi), %eax
    movl $4, %ecx
1:
    movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b

    movl $(GUEST_PVH_PAGES + 0x2000), %edi
    movl $0x83, %eax
    xorl %edx, %edx
    movl $2048, %ecx
2:
    movl %eax, (%edi)
    movl %edx, 4(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    addl $8, %edi
    loop 2b

    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $GUEST_PVH_PAGES, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    lgdt guest_pvh_gdt_pointer
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x10, $guest_pvh_long

    .code64
guest_pvh_long:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq (GUEST_STACK + {stack_size})(%rip), %rsp
    movl %esi, %edi
    call guest_pvh_zero_page
    movq %rax, %rsi
    jmp _start

    .balign 8
guest_pvh_gdt:
    .quad 0
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
guest_pvh_gdt_pointer:
    .word 31
    .long guest_pvh_gdt
    .popsection
    "#,
    stack_size = const crate::STACK_SIZE,
    options(att_syntax)
);

fn read_u32(address: usize) -> u32 {
    // SAFETY: identity-mapped memory QEMU handed us (start info, memory map).
    unsafe { (address as *const u32).read_unaligned() }
}

fn read_u64(address: usize) -> u64 {
    // SAFETY: as for read_u32.
    unsafe { (address as *const u64).read_unaligned() }
}

/// Builds a Linux zero page from `hvm_start_info` (command line and memory
/// map) and returns its address. Runs before .bss is zeroed: it touches only
/// `GUEST_PVH_PAGES`.
#[no_mangle]
extern "C" fn guest_pvh_zero_page(start_info: u64) -> u64 {
    let zero_page = core::ptr::addr_of_mut!(GUEST_PVH_PAGES) as usize + ZERO_PAGE_OFFSET;
    let write_u32 = |offset: usize, value: u32| {
        // SAFETY: offset < 4096 inside our zero page.
        unsafe { ((zero_page + offset) as *mut u32).write_unaligned(value) }
    };
    let write_u64 = |offset: usize, value: u64| {
        // SAFETY: as above.
        unsafe { ((zero_page + offset) as *mut u64).write_unaligned(value) }
    };
    ENTRY_KIND.store(ENTERED_VIA_PVH, Ordering::SeqCst);
    let info = start_info as usize;
    if info == 0 || read_u32(info) != HVM_START_MAGIC {
        return zero_page as u64;
    }
    let version = read_u32(info + 4);
    let cmdline = read_u64(info + 24);
    write_u32(0x228, cmdline as u32);
    write_u32(0x0c8, (cmdline >> 32) as u32);
    if version >= 1 {
        let memmap = read_u64(info + 40) as usize;
        let entries = (read_u32(info + 48) as usize).min(E820_MAX_ENTRIES);
        for index in 0..entries {
            let entry = memmap + index * MEMMAP_ENTRY_SIZE;
            let offset = 0x2d0 + index * 20;
            write_u64(offset, read_u64(entry));
            write_u64(offset + 8, read_u64(entry + 8));
            write_u32(offset + 16, read_u32(entry + 16));
        }
        // SAFETY: e820_entries, inside our zero page.
        unsafe { ((zero_page + 0x1e8) as *mut u8).write(entries as u8) };
    }
    zero_page as u64
}
