//! The command-line words the guest understands: `guest.mode=`,
//! `guest.check=`, `guest.write=` and Linux's `virtio_mmio.device=`.

/// A virtio-mmio device from `virtio_mmio.device=<size>@<base>:<irq>`.
#[derive(Clone, Copy)]
pub struct MmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// GSI (IOAPIC input) of its interrupt.
    pub irq: u32,
}

/// Words of the command line (split on spaces).
fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|&byte| byte == b' ' || byte == b'\t' || byte == b'\n')
        .filter(|word| !word.is_empty())
}

/// The value of the first `key=value` word for `key` (given with its `=`).
pub fn value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    words(cmdline).find_map(|word| word.strip_prefix(key))
}

/// Parses a decimal or `0x` hexadecimal number; None on anything else or overflow.
pub fn parse_number(text: &[u8]) -> Option<u64> {
    let (digits, radix) = match text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
    {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in digits {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' if radix == 16 => byte - b'a' + 10,
            b'A'..=b'F' if radix == 16 => byte - b'A' + 10,
            _ => return None,
        };
        value = value.checked_mul(radix)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// Parses a size with an optional K/M/G suffix, as Linux's memparse does.
fn parse_size(text: &[u8]) -> Option<u64> {
    let (number, shift) = match text.last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    parse_number(number)?.checked_mul(1 << shift)
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
fn parse_mmio_device(text: &[u8]) -> Option<MmioDevice> {
    let at = text.iter().position(|&byte| byte == b'@')?;
    let size = parse_size(&text[..at])?;
    let rest = &text[at + 1..];
    let colon = rest.iter().position(|&byte| byte == b':')?;
    let base = parse_size(&rest[..colon])?;
    let irq_text = &rest[colon + 1..];
    let irq_end = irq_text
        .iter()
        .position(|&byte| byte == b':')
        .unwrap_or(irq_text.len());
    let irq = u32::try_from(parse_number(&irq_text[..irq_end])?).ok()?;
    Some(MmioDevice { base, size, irq })
}

/// The first well-formed `virtio_mmio.device=` on the command line.
pub fn first_mmio_device(cmdline: &[u8]) -> Option<MmioDevice> {
    words(cmdline)
        .filter_map(|word| word.strip_prefix(b"virtio_mmio.device="))
        .find_map(parse_mmio_device)
}

/// Every well-formed `virtio_mmio.device=` on the command line, in order.
pub fn mmio_devices(cmdline: &[u8]) -> impl Iterator<Item = MmioDevice> + '_ {
    words(cmdline)
        .filter_map(|word| word.strip_prefix(b"virtio_mmio.device="))
        .filter_map(parse_mmio_device)
}

/// The number of `virtio_mmio.device=` words.
pub fn mmio_device_count(cmdline: &[u8]) -> usize {
    words(cmdline)
        .filter(|word| word.starts_with(b"virtio_mmio.device="))
        .count()
}
