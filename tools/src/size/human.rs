//! Human formatting of sizes (qemu's `size_to_str`) and the C `%g`
//! formatting it relies on.

/// Formats a size the way qemu's `size_to_str` does: `printf("%0.3g %sB")`
/// in binary units, switching unit once the value reaches 1000 of the
/// current one ("512 B", "1 KiB", "12.5 KiB", "1.5 GiB", and, faithfully,
/// "1e+03 KiB" for 1023488 bytes).
pub fn size_to_str(size: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let scaled = size as f64 / (1000.0 / 1024.0);
    // The exponent frexp() returns: e with 2^(e-1) <= x < 2^e, 0 for 0.
    let exponent = if scaled == 0.0 {
        0
    } else {
        let mut e = scaled.log2().floor() as i32 + 1;
        // Correct log2 rounding near powers of two.
        if 2f64.powi(e - 1) > scaled {
            e -= 1;
        } else if 2f64.powi(e) <= scaled {
            e += 1;
        }
        e
    };
    // C integer division truncates towards zero: (0 - 1) / 10 == 0.
    let index = ((exponent - 1) / 10).clamp(0, 6) as usize;
    let divisor = (1u64 << (index * 10)) as f64;
    format!(
        "{} {}B",
        format_g(size as f64 / divisor, 3),
        SUFFIXES[index]
    )
}

/// C's `%.{precision}g` for finite non-negative values.
pub fn format_g(value: f64, precision: usize) -> String {
    let precision = precision.max(1);
    if value == 0.0 {
        return "0".to_owned();
    }
    // Round to `precision` significant digits to learn the exponent.
    let sci = format!("{:.*e}", precision - 1, value);
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp output always contains 'e'");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    if exp < -4 || exp >= precision as i32 {
        let mantissa = strip_fraction_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        strip_fraction_zeros(&format!("{value:.decimals$}")).to_owned()
    }
}

/// Removes trailing zeros after a decimal point, and the point itself.
fn strip_fraction_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `virtual size:` lines of `qemu-img info -f raw` on files of these
    /// lengths (qemu-img 10.0.2), and values computed by qemu's formula.
    #[test]
    fn size_to_str_matches_qemu_img() {
        let cases = [
            (0, "0 B"),
            (512, "512 B"),
            (999, "999 B"),
            (1000, "0.977 KiB"),
            (1024, "1 KiB"),
            (12800, "12.5 KiB"),
            (1023488, "1e+03 KiB"),
            (1022976, "999 KiB"),
            (1179648, "1.12 MiB"),
            (1610612736, "1.5 GiB"),
            (1000448, "977 KiB"),
            (1048576, "1 MiB"),
            (1048064, "1 MiB"),
            (1314816, "1.25 MiB"),
            (1376256, "1.31 MiB"),
            (331776, "324 KiB"),
            (1073741824, "1 GiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (size, text) in cases {
            assert_eq!(size_to_str(size), text, "size {size}");
        }
    }

    #[test]
    fn format_g_follows_c() {
        assert_eq!(format_g(999.5, 3), "1e+03");
        assert_eq!(format_g(0.0001, 3), "0.0001");
        assert_eq!(format_g(0.00001, 3), "1e-05");
        assert_eq!(format_g(1.125, 3), "1.12");
        assert_eq!(format_g(100.0, 3), "100");
        assert_eq!(format_g(12.25, 3), "12.2");
    }
}
