//! A tiny ring-0 test guest for the vmm: entered in 64-bit long mode through
//! the Linux boot protocol's 64-bit entry (RSI = boot_params), it prints on
//! the serial port, runs the test its command line selects
//! (`guest.mode=hello|disk|bad-desc|past-end|bad-io|idle|io|count|dirty|net|net-bad|net-mq`), and resets
//! through the i8042 (idle and io power off on the ACPI power button). See README.md for the contract with the VMM.

#![no_std]
#![no_main]

mod arch;
mod bootparams;
mod cmdline;
mod console;
mod count;
mod dirty;
mod disk;
mod fill;
mod hal;
mod idle;
mod mem;
mod net;
mod netmq;
mod pattern;
mod peer;
mod pvh;
mod rawq;
mod virtq;
mod vmgenid;

use core::arch::global_asm;

use bootparams::{BootParams, E820_RAM};
use cmdline::MmioDevice;
use console::{line, put_bytes, put_dec, put_hex, put_str};

/// Size of the guest's own stack.
pub(crate) const STACK_SIZE: usize = 64 * 1024;
/// Lowest address the bump allocator hands out (clear of the VMM's boot
/// structures and of our image).
const BUMP_FLOOR: usize = 4 << 20;
/// The identity map covers the first 4 GiB only.
const IDENTITY_MAP_END: u64 = 1 << 32;
/// Default `guest.write` sector: 127, so 200 KiB cross 64 KiB clusters.
const DEFAULT_WRITE_SECTOR: u64 = 127;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

#[no_mangle]
#[link_section = ".bss.guest_stack"]
static mut GUEST_STACK: Stack = Stack([0; STACK_SIZE]);

extern "C" {
    static __image_end: u8;
}

// Entry: interrupts off, our own stack, .bss zeroed, boot_params in RDI.
global_asm!(
    r#"
    .section .text.boot,"ax"
    .global _start
    _start:
        cli
        cld
        lea rsp, [rip + GUEST_STACK + {stack_size}]
        mov r12, rsi
        lea rdi, [rip + __bss_start]
        lea rcx, [rip + __bss_end]
        sub rcx, rdi
        xor eax, eax
        rep stosb
        mov rdi, r12
        call guest_main
    2:
        cli
        hlt
        jmp 2b
    .text
    "#,
    stack_size = const STACK_SIZE,
);

/// The test the command line selects.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Hello,
    Disk,
    BadDesc,
    PastEnd,
    BadIo,
    Idle,
    Io,
    Count,
    Dirty,
    Net,
    NetBad,
    NetMq,
}

fn parse_mode(text: &[u8]) -> Option<Mode> {
    match text {
        b"hello" => Some(Mode::Hello),
        b"disk" => Some(Mode::Disk),
        b"bad-desc" => Some(Mode::BadDesc),
        b"past-end" => Some(Mode::PastEnd),
        b"bad-io" => Some(Mode::BadIo),
        b"idle" => Some(Mode::Idle),
        b"io" => Some(Mode::Io),
        b"count" => Some(Mode::Count),
        b"dirty" => Some(Mode::Dirty),
        b"net" => Some(Mode::Net),
        b"net-bad" => Some(Mode::NetBad),
        b"net-mq" => Some(Mode::NetMq),
        _ => None,
    }
}

#[no_mangle]
extern "C" fn guest_main(boot_params_address: u64) -> ! {
    // SAFETY: the VMM passes the zero page's address in RSI (boot protocol).
    let boot = unsafe { BootParams::new(boot_params_address as usize) };
    let cmdline = boot.cmdline();
    let device = cmdline::first_mmio_device(cmdline);
    let mode = match cmdline::value(cmdline, b"guest.mode=") {
        Some(text) => match parse_mode(text) {
            Some(mode) => mode,
            None => {
                put_str("guest: unknown guest.mode=");
                put_bytes(text);
                put_str("\n");
                arch::reset();
            }
        },
        None if device.is_some() => Mode::Disk,
        None => Mode::Hello,
    };

    if mode == Mode::Hello {
        hello(&boot, cmdline);
        arch::reset();
    }
    if matches!(mode, Mode::Idle | Mode::Io | Mode::Count | Mode::Dirty) {
        // The first byte as soon as we run (what start-to-first-byte times).
        line("start");
    }

    arch::mask_pic();
    arch::init_idt();
    arch::init_lapic();
    arch::sti();
    init_allocator(&boot);

    match mode {
        Mode::Hello => {}
        Mode::Idle => idle::idle(),
        Mode::Io => idle::io(cmdline, device),
        Mode::Count => count::count(cmdline, device),
        Mode::Dirty => dirty::dirty(cmdline),
        Mode::BadIo => bad_io(),
        Mode::Net | Mode::NetBad => {
            if let Err(failure) = net::run(cmdline, mode == Mode::NetBad) {
                disk::print_failure("net", &failure);
            }
        }
        Mode::NetMq => {
            if let Err(failure) = netmq::run(cmdline) {
                disk::print_failure("net-mq", &failure);
            }
        }
        Mode::Disk | Mode::BadDesc | Mode::PastEnd => disk_mode(mode, cmdline, device),
    }
    arch::reset()
}

fn hello(boot: &BootParams, cmdline: &[u8]) {
    line("hello");
    put_str("guest: cmdline=");
    put_bytes(cmdline);
    put_str("\n");
    let count = boot.e820_count();
    put_str("guest: e820 entries=");
    put_dec(count as u64);
    put_str("\n");
    for index in 0..count {
        let entry = boot.e820(index);
        put_str("guest: e820 addr=");
        put_hex(entry.addr);
        put_str(" size=");
        put_hex(entry.size);
        put_str(" type=");
        put_dec(u64::from(entry.kind));
        put_str("\n");
    }
}

/// Hands the bump allocator the largest usable RAM below 4 GiB above our
/// image and `BUMP_FLOOR`.
fn init_allocator(boot: &BootParams) {
    // Only the symbol's address is taken (no read).
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let floor = image_end.max(BUMP_FLOOR as u64);
    let mut best = (0u64, 0u64);
    for index in 0..boot.e820_count() {
        let entry = boot.e820(index);
        if entry.kind != E820_RAM {
            continue;
        }
        let start = entry.addr.max(floor);
        let end = entry.addr.saturating_add(entry.size).min(IDENTITY_MAP_END);
        if end > start && end - start > best.1 - best.0 {
            best = (start, end);
        }
    }
    if best.1 - best.0 < 1 << 20 {
        line("FAIL no usable RAM above 4 MiB in the e820 map");
        arch::reset();
    }
    mem::init_bump(best.0 as usize, best.1 as usize);
}

fn disk_mode(mode: Mode, cmdline: &[u8], device: Option<MmioDevice>) {
    let (prefix, result) = match device {
        None => (
            "disk",
            Err(disk::Failure::Other(
                "no virtio_mmio.device on the command line, count",
                cmdline::mmio_device_count(cmdline) as u64,
            )),
        ),
        Some(device) => {
            let check_sector = sector_argument(cmdline, b"guest.check=", 0);
            let write_sector = sector_argument(cmdline, b"guest.write=", DEFAULT_WRITE_SECTOR);
            match mode {
                Mode::BadDesc => ("bad-desc", rawq::run_bad_desc(&device, check_sector)),
                Mode::PastEnd => ("past-end", disk::run_past_end(&device)),
                _ => ("disk", disk::run_disk(&device, check_sector, write_sector)),
            }
        }
    };
    if let Err(failure) = result {
        disk::print_failure(prefix, &failure);
    }
}

fn sector_argument(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    match cmdline::value(cmdline, key) {
        None => default,
        Some(text) => match cmdline::parse_number(text) {
            Some(sector) => sector,
            None => {
                put_str("guest: disk FAIL bad ");
                put_bytes(key);
                put_bytes(text);
                put_str("\n");
                arch::reset();
            }
        },
    }
}

/// `guest.mode=bad-io`: accesses nothing is behind; the VMM must log them
/// and carry on.
fn bad_io() {
    const PORT: u16 = 0x510;
    arch::outb(PORT, 0x5a);
    arch::outw(PORT, 0x1234);
    arch::outl(PORT + 1, 0xdead_beef);
    let byte = arch::inb(PORT);
    let word = arch::inw(PORT);
    let dword = arch::inl(PORT + 1);
    put_str("guest: bad-io port ");
    put_hex(u64::from(PORT));
    put_str(" read ");
    put_hex(u64::from(byte));
    put_str(" ");
    put_hex(u64::from(word));
    put_str(" ");
    put_hex(u64::from(dword));
    put_str("\n");
    for address in [0xd010_0000usize, 0xc000_0000] {
        // SAFETY: identity-mapped addresses with no RAM behind them (MMIO
        // holes for the VMM); nothing of Rust's lives there.
        let value = unsafe {
            arch::mmio_write32(address, 0x1234_5678);
            arch::mmio_read32(address)
        };
        put_str("guest: bad-io mmio ");
        put_hex(address as u64);
        put_str(" read ");
        put_hex(u64::from(value));
        put_str("\n");
    }
    line("bad-io survived");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    put_str("guest: panic");
    if let Some(message) = info.message().as_str() {
        put_str(": ");
        put_str(message);
    }
    if let Some(location) = info.location() {
        put_str(" at ");
        put_str(location.file());
        put_str(":");
        put_dec(u64::from(location.line()));
    }
    put_str("\n");
    arch::reset()
}

/// Never called (panic = abort); the linker wants the symbol.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
