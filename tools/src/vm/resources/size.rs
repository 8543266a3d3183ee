//! virsh's scaled sizes (`vshCommandOptScaledInt`): a number with an
//! optional unit suffix, KiB when there is none, as `setmem` and
//! `setmaxmem` take them.

/// Bytes of `text` (default unit KiB), at most `max_bytes`; None if
/// malformed or out of range.
pub fn scaled_bytes(text: &str, max_bytes: u64) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let scale: u64 = match text[digits..].to_ascii_lowercase().as_str() {
        "" => 1024,
        "b" | "byte" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        "p" | "pib" => 1 << 50,
        "pb" => 1_000_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(scale).filter(|b| *b <= max_bytes)
}

#[cfg(test)]
mod tests {
    use super::scaled_bytes;

    #[test]
    fn units_and_limits() {
        assert_eq!(scaled_bytes("100", u64::MAX), Some(102_400));
        assert_eq!(scaled_bytes("2G", u64::MAX), Some(2 << 30));
        assert_eq!(scaled_bytes("5MB", u64::MAX), Some(5_000_000));
        assert_eq!(scaled_bytes("-5", u64::MAX), None);
        assert_eq!(scaled_bytes("5x", u64::MAX), None);
        assert_eq!(scaled_bytes("99999999999999999999", u64::MAX), None);
        assert_eq!(scaled_bytes("2", 1024), None);
    }
}
