//! libvirt's memory units (`<memory unit='MiB'>64</memory>`): a scaled
//! integer turned into KiB, rounded up as libvirt rounds it, and bounded.

use super::XmlError;

/// The largest memory a definition may name, in KiB (16 TiB): far over any
/// host we run on, far under where KiB-to-byte arithmetic could overflow.
pub const MAX_MEMORY_KIB: u64 = 16 << 30;

/// The number of bytes one `unit` stands for, as libvirt's
/// virScaleInteger reads it (case-insensitive; `k` and `KiB` are 1024,
/// `KB` 1000, ...). None for a unit libvirt does not know.
fn unit_bytes(unit: &str) -> Option<u64> {
    let lower = unit.to_ascii_lowercase();
    let (power, decimal) = match lower.as_str() {
        "b" | "byte" | "bytes" => return Some(1),
        "k" | "kib" => (1, false),
        "kb" => (1, true),
        "m" | "mib" => (2, false),
        "mb" => (2, true),
        "g" | "gib" => (3, false),
        "gb" => (3, true),
        "t" | "tib" => (4, false),
        "tb" => (4, true),
        "p" | "pib" => (5, false),
        "pb" => (5, true),
        "e" | "eib" => (6, false),
        "eb" => (6, true),
        _ => return None,
    };
    let base: u64 = if decimal { 1000 } else { 1024 };
    Some(base.pow(power))
}

/// Reads `<element unit='UNIT'>VALUE</element>` (unit absent = KiB, as
/// libvirt's default for memory) into KiB, rounding a part-KiB up.
pub fn parse_memory_kib(element: &str, value: &str, unit: Option<&str>) -> Result<u64, XmlError> {
    let bad = |reason: &str| XmlError::BadValue {
        element: element.to_string(),
        value: truncate(value),
        reason: reason.to_string(),
    };
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a non-negative integer"));
    }
    let number: u64 = value.parse().map_err(|_| bad("too large"))?;
    let scale = match unit {
        None => 1024,
        Some(unit) => unit_bytes(unit).ok_or_else(|| XmlError::BadValue {
            element: element.to_string(),
            value: truncate(unit),
            reason: "unknown unit".to_string(),
        })?,
    };
    let bytes = u128::from(number) * u128::from(scale);
    let kib = bytes.div_ceil(1024);
    if kib > u128::from(MAX_MEMORY_KIB) {
        return Err(bad("over 16 TiB"));
    }
    // Bounded by MAX_MEMORY_KIB just above.
    Ok(kib as u64)
}

/// A value cut to at most 64 characters, for error messages about hostile
/// input.
pub fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_as_libvirt_does() {
        assert_eq!(
            parse_memory_kib("memory", "64", Some("MiB")).unwrap(),
            65536
        );
        assert_eq!(parse_memory_kib("memory", "64", Some("M")).unwrap(), 65536);
        assert_eq!(
            parse_memory_kib("memory", "1", Some("GiB")).unwrap(),
            1 << 20
        );
        assert_eq!(parse_memory_kib("memory", "1", Some("GB")).unwrap(), 976563);
        assert_eq!(parse_memory_kib("memory", "2048", None).unwrap(), 2048);
        assert_eq!(parse_memory_kib("memory", "1", Some("b")).unwrap(), 1);
        assert_eq!(
            parse_memory_kib("memory", "1025", Some("bytes")).unwrap(),
            2
        );
        assert_eq!(parse_memory_kib("memory", "1000", Some("KB")).unwrap(), 977);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_memory_kib("memory", "-1", None).is_err());
        assert!(parse_memory_kib("memory", "", None).is_err());
        assert!(parse_memory_kib("memory", "12x", None).is_err());
        assert!(parse_memory_kib("memory", "1", Some("parsecs")).is_err());
        assert!(parse_memory_kib("memory", "99999999999999999999999", None).is_err());
        assert!(parse_memory_kib("memory", "17", Some("TiB")).is_err());
        assert!(parse_memory_kib("memory", "16", Some("EiB")).is_err());
    }
}
