//! x86 plumbing in ring 0: port I/O, MMIO, the IDT and interrupt stubs, the
//! legacy PIC, the local APIC (and its timer) and the IOAPIC, and reset.
//!
//! Only instructions that the nested hypervisor's ring-0 emulator handles are
//! used: no SSE, x87, int n or int3.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// Vector of the virtio-mmio device's interrupt.
pub const VIRTIO_VECTOR: u8 = 0x30;
/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x31;
/// Vector of the ACPI GED's interrupt (the power button).
pub const GED_VECTOR: u8 = 0x32;
/// Vector for spurious local APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Timer period in APIC bus ticks (KVM's bus runs at 1 GHz: 10 ms).
const TIMER_PERIOD_TICKS: u32 = 10_000_000;
/// Timer period in milliseconds, matching `TIMER_PERIOD_TICKS`.
pub const TIMER_PERIOD_MS: u64 = 10;

const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_SVR: usize = LAPIC_BASE + 0xf0;
const LAPIC_LVT_TIMER: usize = LAPIC_BASE + 0x320;
const LAPIC_TIMER_INITIAL: usize = LAPIC_BASE + 0x380;
const LAPIC_TIMER_DIVIDE: usize = LAPIC_BASE + 0x3e0;
const LAPIC_SVR_ENABLE: u32 = 1 << 8;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_MASKED: u32 = 1 << 16;
const LAPIC_DIVIDE_BY_1: u32 = 0xb;

const IOAPIC_BASE: usize = 0xfec0_0000;
const IOAPIC_REGSEL: usize = IOAPIC_BASE;
const IOAPIC_WINDOW: usize = IOAPIC_BASE + 0x10;
const IOAPIC_REDIRECTION_BASE: u32 = 0x10;

/// Interrupts taken from the virtio device (counted by the stub).
#[no_mangle]
pub static GUEST_VIRTIO_IRQS: AtomicU64 = AtomicU64::new(0);
/// Local APIC timer interrupts taken (counted by the stub).
#[no_mangle]
pub static GUEST_TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

/// GED interrupts taken (incremented by the GED stub).
#[no_mangle]
pub static GUEST_GED_IRQS: AtomicU64 = AtomicU64::new(0);

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a double word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no memory effects visible to Rust.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a word from an I/O port.
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for inb.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a double word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for inb.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a u32 from a physical (identity-mapped) MMIO address.
///
/// # Safety
/// `address` must be 4-byte aligned, mapped by the page tables, and reading it
/// must have no effect on memory Rust owns.
pub unsafe fn mmio_read32(address: usize) -> u32 {
    // SAFETY: per the caller.
    unsafe { (address as *const u32).read_volatile() }
}

/// Writes a u32 to a physical (identity-mapped) MMIO address.
///
/// # Safety
/// As for `mmio_read32`, and the write must not touch memory Rust owns.
pub unsafe fn mmio_write32(address: usize, value: u32) {
    // SAFETY: per the caller.
    unsafe { (address as *mut u32).write_volatile(value) }
}

/// One 64-bit IDT gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (interrupts stay disabled inside).
const INTERRUPT_GATE: u8 = 0x8e;
/// The 64-bit code segment the VMM's GDT gives us.
const KERNEL_CS: u16 = 0x10;

const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([EMPTY_GATE; 256]);

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

extern "C" {
    static GUEST_EXCEPTION_STUBS: [u64; 32];
    fn guest_irq_virtio();
    fn guest_irq_timer();
    fn guest_irq_ged();
    fn guest_irq_spurious();
    fn guest_irq_other();
}

// Interrupt stubs. Exceptions push their vector and go to a Rust function
// that prints it and resets; device interrupts count, EOI and return.
global_asm!(
    r#"
    .section .text.guest_isr,"ax"
    .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    guest_exception_stub_\n:
        push \n
        jmp guest_exception_common
    .endr
    guest_exception_common:
        mov rdi, [rsp]
        mov rsi, [rsp + 8]
        mov rdx, [rsp + 16]
        and rsp, -16
        call guest_exception
    2:
        cli
        hlt
        jmp 2b

    .global guest_irq_virtio
    guest_irq_virtio:
        push rax
        inc qword ptr [rip + GUEST_VIRTIO_IRQS]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

    .global guest_irq_timer
    guest_irq_timer:
        push rax
        inc qword ptr [rip + GUEST_TIMER_TICKS]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

    .global guest_irq_ged
    guest_irq_ged:
        push rax
        inc qword ptr [rip + GUEST_GED_IRQS]
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

    .global guest_irq_other
    guest_irq_other:
        push rax
        mov rax, 0xfee000b0
        mov dword ptr [rax], 0
        pop rax
        iretq

    .global guest_irq_spurious
    guest_irq_spurious:
        iretq

    .section .rodata.guest_isr,"a"
    .balign 8
    .global GUEST_EXCEPTION_STUBS
    GUEST_EXCEPTION_STUBS:
    .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad guest_exception_stub_\n
    .endr
    .text
    "#
);

/// Called by the exception stubs: prints the vector and what follows it on
/// the stack (error code or RIP), then resets.
#[no_mangle]
extern "C" fn guest_exception(vector: u64, word1: u64, word2: u64) -> ! {
    crate::console::put_str("guest: exception vector=");
    crate::console::put_dec(vector);
    crate::console::put_str(" stack=");
    crate::console::put_hex(word1);
    crate::console::put_str(" ");
    crate::console::put_hex(word2);
    crate::console::put_str("\n");
    reset()
}

fn set_gate(idt: &mut Idt, vector: u8, handler: usize) {
    idt.0[usize::from(vector)] = Gate {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist: 0,
        type_attributes: INTERRUPT_GATE,
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    };
}

/// Fills and loads the IDT: exceptions print and reset, the virtio and timer
/// vectors count, anything else is acknowledged and ignored.
pub fn init_idt() {
    // SAFETY: single CPU, interrupts disabled, called once before any
    // interrupt can arrive; nothing else references IDT.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for vector in 32..=255u8 {
        set_gate(idt, vector, guest_irq_other as *const () as usize);
    }
    // SAFETY: the table is a static defined in the asm above.
    let stubs = unsafe { &*core::ptr::addr_of!(GUEST_EXCEPTION_STUBS) };
    for (vector, stub) in stubs.iter().enumerate() {
        set_gate(idt, vector as u8, *stub as usize);
    }
    set_gate(idt, VIRTIO_VECTOR, guest_irq_virtio as *const () as usize);
    set_gate(idt, TIMER_VECTOR, guest_irq_timer as *const () as usize);
    set_gate(idt, GED_VECTOR, guest_irq_ged as *const () as usize);
    set_gate(
        idt,
        SPURIOUS_VECTOR,
        guest_irq_spurious as *const () as usize,
    );
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: the IDT is static and its gates point at our stubs.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// Masks every line of both legacy 8259 PICs.
pub fn mask_pic() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Software-enables the local APIC and starts its periodic timer, which
/// bounds every wait in `hlt`.
pub fn init_lapic() {
    // SAFETY: the LAPIC page is identity-mapped MMIO, not Rust memory.
    unsafe {
        mmio_write32(LAPIC_SVR, LAPIC_SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
        mmio_write32(LAPIC_TIMER_DIVIDE, LAPIC_DIVIDE_BY_1);
        mmio_write32(
            LAPIC_LVT_TIMER,
            LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR),
        );
        mmio_write32(LAPIC_TIMER_INITIAL, TIMER_PERIOD_TICKS);
    }
}

/// Stops the local APIC timer (masked, count 0), so nothing wakes a halted
/// CPU after the reset request (or in idle mode, but an interrupt).
pub fn stop_lapic_timer() {
    // SAFETY: LAPIC MMIO.
    unsafe {
        mmio_write32(LAPIC_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
        mmio_write32(LAPIC_TIMER_INITIAL, 0);
    }
}

/// Routes IOAPIC input `gsi` to `vector` on APIC 0: fixed delivery, physical
/// destination, edge-triggered, active high, unmasked.
pub fn route_gsi(gsi: u32, vector: u8) {
    let register = IOAPIC_REDIRECTION_BASE + 2 * gsi;
    // SAFETY: IOAPIC MMIO; high half (destination) first, then the low half
    // that unmasks the entry.
    unsafe {
        mmio_write32(IOAPIC_REGSEL, register + 1);
        mmio_write32(IOAPIC_WINDOW, 0);
        mmio_write32(IOAPIC_REGSEL, register);
        mmio_write32(IOAPIC_WINDOW, u32::from(vector));
    }
}

/// Timer ticks since the LAPIC timer was started.
pub fn ticks() -> u64 {
    GUEST_TIMER_TICKS.load(Ordering::SeqCst)
}

/// Virtio interrupts taken so far.
pub fn virtio_irqs() -> u64 {
    GUEST_VIRTIO_IRQS.load(Ordering::SeqCst)
}

/// GED interrupts taken so far.
pub fn ged_irqs() -> u64 {
    GUEST_GED_IRQS.load(Ordering::SeqCst)
}

/// Disables interrupts.
pub fn cli() {
    // SAFETY: only changes IF.
    unsafe { asm!("cli", options(nostack)) }
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: only changes IF; the IDT is loaded before anyone calls this.
    unsafe { asm!("sti", options(nostack)) }
}

/// Enables interrupts and halts until one arrives (atomically: the
/// instruction after `sti` runs before any interrupt is taken).
pub fn sti_hlt() {
    // SAFETY: waits for an interrupt; the handlers preserve all registers.
    unsafe { asm!("sti", "hlt", options(nostack)) }
}

/// QEMU's isa-debug-exit port (`-device isa-debug-exit,iobase=0xf4`), for
/// QEMU machines without an i8042 (microvm).
const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;

/// Resets the machine through the i8042 (our VMM exits there); when booted
/// by QEMU through PVH, then tries QEMU's debug-exit port; then halts forever.
pub fn reset() -> ! {
    cli();
    stop_lapic_timer();
    outb(0x64, 0xfe);
    if crate::pvh::booted_via_pvh() {
        outb(QEMU_DEBUG_EXIT_PORT, 0);
    }
    loop {
        // SAFETY: stops the CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
