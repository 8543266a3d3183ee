//! Output on the 8250 UART at I/O port 0x3f8, byte by byte, with our own
//! number printing (libcore's integer formatting uses SSE2).

use crate::arch::{inb, outb};

/// The UART's transmit holding register.
const COM1: u16 = 0x3f8;
/// Its line status register; bit 5 = transmit holding register empty.
const COM1_LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How often to poll the LSR before writing anyway.
const LSR_POLL_LIMIT: u32 = 1000;

/// Writes one byte, waiting (boundedly) for the transmitter.
pub fn put_byte(byte: u8) {
    for _ in 0..LSR_POLL_LIMIT {
        if inb(COM1_LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    outb(COM1, byte);
}

/// Writes a string, turning `\n` into `\r\n`.
pub fn put_str(text: &str) {
    put_bytes(text.as_bytes());
}

/// Writes raw bytes, turning `\n` into `\r\n`.
pub fn put_bytes(bytes: &[u8]) {
    for &byte in bytes {
        if byte == b'\n' {
            put_byte(b'\r');
        }
        put_byte(byte);
    }
}

/// Writes `value` in decimal.
pub fn put_dec(value: u64) {
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut rest = value;
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    while count > 0 {
        count -= 1;
        put_byte(digits[count]);
    }
}

/// Writes `value` as `0x` and lower-case hex digits, without leading zeros.
pub fn put_hex(value: u64) {
    put_str("0x");
    let mut started = false;
    for shift in (0..16).rev() {
        let nibble = ((value >> (shift * 4)) & 0xf) as u8;
        if nibble != 0 || started || shift == 0 {
            started = true;
            put_byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
    }
}

/// Writes a line: `guest: ` + text + newline.
pub fn line(text: &str) {
    put_str("guest: ");
    put_str(text);
    put_str("\n");
}
