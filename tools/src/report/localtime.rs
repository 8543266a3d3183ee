//! Local-time formatting of snapshot dates (`%Y-%m-%d %H:%M:%S`), the one
//! place this crate calls into libc's time functions.

/// Formats seconds since the epoch as local time, `YYYY-MM-DD HH:MM:SS`,
/// as qemu-img's snapshot table does. Falls back to UTC if the C library
/// cannot convert the value.
pub fn format_local(seconds: i64) -> String {
    // time_t is 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    let time: libc::time_t = match seconds.try_into() {
        Ok(t) => t,
        Err(_) => return format_utc(seconds),
    };
    // SAFETY: `tm` is a plain C struct for which all-zero bytes is a valid
    // value; `localtime_r` only writes into the `tm` we pass and reads
    // `time`, both valid for the duration of the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: see above; both pointers are to live, properly aligned locals.
    let converted = unsafe { libc::localtime_r(&time, &mut tm) };
    if converted.is_null() {
        return format_utc(seconds);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Formats seconds since the epoch as UTC, `YYYY-MM-DD HH:MM:SS`.
pub fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86400);
    let secs_of_day = seconds.rem_euclid(86400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        year,
        month,
        day,
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_412_956), "2026-11-23 05:49:16");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn local_dates_have_the_shape() {
        let text = format_local(1_795_412_956);
        assert_eq!(text.len(), 19);
        assert_eq!(&text[4..5], "-");
    }
}
