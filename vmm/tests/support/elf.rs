//! Hand-made static x86-64 ELF guests for tests that need a guest doing
//! one small thing (print a line and halt, run one instruction).

/// A static x86-64 ELF loaded at 2 MiB whose code writes "waiting\n" to
/// the serial port and then halts forever.
pub fn waiting_guest() -> Vec<u8> {
    elf(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x10, 0x00, 0x00, 0x00, // lea rsi, [rip + 16] (msg)
        0x8a, 0x06, // loop: mov al, [rsi]
        0x84, 0xc0, // test al, al
        0x74, 0x06, // jz done
        0xee, // out dx, al
        0x48, 0xff, 0xc6, // inc rsi
        0xeb, 0xf4, // jmp loop
        0xfa, // done: cli
        0xf4, // hlt
        0xeb, 0xfc, // jmp done
        b'w', b'a', b'i', b't', b'i', b'n', b'g', b'\n', 0,
    ])
}

/// A static x86-64 ELF loaded at 2 MiB running `code` from its entry.
pub fn elf(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x20_0000;
    let header_len = 64 + 56;
    let total = (header_len + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + header_len as u64).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, total, total, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}
