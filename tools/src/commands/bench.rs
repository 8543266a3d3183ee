//! `img bench`: qemu-img bench's options, messages and output over the
//! io_uring backends of `blockdev` (the engine is [`blockdev::bench`]).

use std::path::Path;

use anyhow::{anyhow, Result};
use blockdev::backend::{open_with_files, OpenOptions};
use blockdev::bench::{run as run_bench, BenchConfig};
use blockdev::disk::CacheMode as DiskCache;
use qcow::fs::{open_storage, probe, Format};

use super::{io_reason, os_text, parse_format, raw_probe_warning};
use crate::cli::{BenchArgs, CacheMode};
use crate::size::{cvtnum, cvtnum_full};

/// Largest value of a C `int`, qemu-img's bound for counts and sizes.
const INT_MAX: i64 = i32::MAX as i64;

/// Why a number did not parse with qemu's `qemu_strtoi`.
#[derive(Debug, PartialEq, Eq)]
enum IntError {
    /// Not a number (or trailing characters).
    Invalid,
    /// Beyond `int`.
    Range,
}

/// qemu's `qemu_strtoi(text, NULL, 0, ..)`: optional leading white space
/// and sign, then decimal, `0x` hexadecimal or `0` octal digits, and
/// nothing after them.
fn strtoi(text: &str) -> std::result::Result<i64, IntError> {
    let s = text.trim_start();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(IntError::Invalid);
    }
    let mut value: i128 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).expect("checked above");
        value = (value * i128::from(radix) + i128::from(d)).min(i128::from(u64::MAX));
    }
    let value = if negative { -value } else { value };
    if value < i128::from(i32::MIN) || value > i128::from(i32::MAX) {
        return Err(IntError::Range);
    }
    Ok(value as i64)
}

/// Parses an `int` option as qemu-img bench does, with its two messages.
fn int_option(name: &str, text: &str, min: i64, max: i64) -> Result<i64> {
    match strtoi(text) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Err(IntError::Invalid) => Err(anyhow!("Invalid {name} specified: '{text}'.")),
        _ => Err(anyhow!(
            "Invalid {name} specified. Must be between {min} and {max}."
        )),
    }
}

/// The validated options.
struct Options {
    config: BenchConfig,
    cache: CacheMode,
    native: bool,
}

fn parse_options(args: &BenchArgs) -> Result<Options> {
    let mut config = BenchConfig::default();
    if let Some(v) = &args.count {
        config.count = int_option("request count", v, 1, INT_MAX)? as u32;
    }
    if let Some(v) = &args.depth {
        config.depth = int_option("queue depth", v, 1, INT_MAX)? as u32;
    }
    let mut native = args.native;
    if let Some(v) = &args.aio {
        match v.as_str() {
            "native" => native = true,
            "threads" | "io_uring" => native = false,
            other => return Err(anyhow!("Invalid aio option: {other}")),
        }
    }
    let cache = match &args.cache {
        Some(v) => CacheMode::parse(v).ok_or_else(|| anyhow!("Invalid cache mode"))?,
        None => CacheMode::Writeback,
    };
    if let Some(v) = &args.offset {
        config.offset = cvtnum("offset", v)?;
    }
    if let Some(v) = &args.buffer_size {
        config.buffer_size = cvtnum_full("buffer size", v, 1, INT_MAX)? as u32;
    }
    let mut step = 0;
    if let Some(v) = &args.step_size {
        step = cvtnum_full("step size", v, 0, INT_MAX)?;
    }
    config.step = if step == 0 {
        u64::from(config.buffer_size)
    } else {
        step
    };
    config.write = args.write;
    if let Some(v) = &args.pattern {
        config.pattern = int_option("pattern byte", v, 0, 255)? as u8;
    }
    if let Some(v) = &args.flush_interval {
        config.flush_interval = int_option("flush interval", v, 0, INT_MAX)? as u32;
    }
    config.drain_on_flush = !args.no_drain;
    if !config.write && config.flush_interval > 0 {
        return Err(anyhow!("--flush-interval is only available in write tests"));
    }
    if config.flush_interval > 0 && config.flush_interval < config.depth {
        return Err(anyhow!("Flush interval can't be smaller than depth"));
    }
    Ok(Options {
        config,
        cache,
        native,
    })
}

/// The backend options for a qemu cache mode.
fn open_options(format: Option<Format>, write: bool, cache: CacheMode) -> OpenOptions {
    OpenOptions {
        format,
        read_only: !write,
        cache: if cache.direct() {
            DiskCache::None
        } else {
            DiskCache::Writeback
        },
        snapshot: None,
        write_through: cache.writethrough(),
        ignore_flush: cache.ignores_flush(),
        poll_max: None,
    }
}

/// An open error in qemu-img's words.
fn open_error(filename: &str, e: &blockdev::Error) -> anyhow::Error {
    let reason = match e {
        blockdev::Error::Open { path, source } => {
            format!("Could not open '{path}': {}", os_text(source))
        }
        blockdev::Error::Qcow(q @ qcow::Error::FormatNotReadable { .. }) => return anyhow!("{q}"),
        blockdev::Error::Qcow(q) => io_reason(q),
        blockdev::Error::Io { source, .. } => os_text(source),
        other => other.to_string(),
    };
    anyhow!("Could not open '{filename}': {reason}")
}

/// A failed request in qemu-img's words (it reports the errno's text).
fn request_error(e: &blockdev::Error) -> anyhow::Error {
    if let blockdev::Error::Qcow(q) = e {
        super::report_corruption(q);
    }
    if let blockdev::Error::Qcow(qcow::Error::Reported { line, .. }) = e {
        // QEMU's driver prints its line (error_report) before the failure.
        eprintln!("{}: {line}", crate::program());
    }
    let reason = match e {
        blockdev::Error::Io { source, .. } => os_text(source),
        blockdev::Error::Qcow(
            qcow::Error::Io { source, .. } | qcow::Error::Reported { source, .. },
        ) => os_text(source),
        blockdev::Error::ReadOnly => "Permission denied".to_string(),
        _ => "Input/output error".to_string(),
    };
    anyhow!("Failed request: {reason}")
}

/// Takes qemu-img's locks on the image bench reads or writes and on its
/// data file or extents; `-U` with `-w` is refused as QEMU refuses
/// force-share on a writable image.
fn lock_bench_image(
    filename: &str,
    format: Option<Format>,
    how: super::locks::ImageUse,
) -> Result<()> {
    use super::locks::lock_image;
    if how.writable && how.force_share {
        return Err(anyhow!(
            "Could not open '{filename}': force-share=on can only be used with read-only images"
        ));
    }
    let path = Path::new(filename);
    let format = match format {
        Some(f) => f,
        None => match open_storage(path, false).and_then(|s| probe(&*s, path)) {
            Ok(f) => f,
            // The open that follows words the trouble.
            Err(_) => return Ok(()),
        },
    };
    lock_image(path, filename, format, how)?;
    // The files the image uses besides its own (a qcow2 data file, vmdk
    // extents), locked as qemu-img locks them, before the open that
    // follows; an image that cannot be read this way is left to it.
    match qcow::fs::open_image_no_backing(path, Some(format)) {
        Ok(image) => super::locks::lock_side_files(filename, &image, how),
        Err(_) => Ok(()),
    }
}

/// Runs `img bench`.
pub fn run(args: &BenchArgs) -> Result<i32> {
    let opts = parse_options(args)?;
    let filename = &args.filename;
    let format = match &args.format {
        Some(f) => Some(parse_format(f).map_err(|e| anyhow!("Could not open '{filename}': {e}"))?),
        None => None,
    };
    if opts.native && !opts.cache.direct() {
        return Err(anyhow!(
            "Could not open '{filename}': aio=native was specified, but it requires \
             cache.direct=on, which was not specified."
        ));
    }
    let cfg = &opts.config;
    if format.is_none() && cfg.write {
        if let Ok(storage) = open_storage(Path::new(filename), false) {
            if matches!(probe(&*storage, Path::new(filename)), Ok(Format::Raw)) {
                eprintln!("{}", raw_probe_warning(filename));
            }
        }
    }
    let how = super::locks::ImageUse::new(cfg.write, args.force_share);
    lock_bench_image(filename, format, how)?;
    let opened = open_with_files(
        Path::new(filename),
        &open_options(format, cfg.write, opts.cache),
    )
    .map_err(|e| open_error(filename, &e))?;
    super::locks::lock_backing_files(filename, &opened.backing_files, how)?;
    let disk = opened.backend;
    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        cfg.count,
        if cfg.write { "write" } else { "read" },
        cfg.buffer_size,
        cfg.depth,
        cfg.offset,
        cfg.step
    );
    if cfg.flush_interval > 0 {
        println!("Sending flush every {} requests", cfg.flush_interval);
    }
    let elapsed = run_bench(&*disk, cfg).map_err(|e| request_error(&e))?;
    println!("Run completed in {:.3} seconds.", elapsed.as_secs_f64());
    disk.close().map_err(|e| request_error(&e))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoi_reads_c_integers() {
        assert_eq!(strtoi("0x10"), Ok(16));
        assert_eq!(strtoi("010"), Ok(8));
        assert_eq!(strtoi(" +5"), Ok(5));
        assert_eq!(strtoi("-1"), Ok(-1));
        assert_eq!(strtoi("0"), Ok(0));
        assert_eq!(strtoi("5x"), Err(IntError::Invalid));
        assert_eq!(strtoi("3G"), Err(IntError::Invalid));
        assert_eq!(strtoi(""), Err(IntError::Invalid));
        assert_eq!(strtoi("09"), Err(IntError::Invalid));
        assert_eq!(strtoi("2147483648"), Err(IntError::Range));
        assert_eq!(strtoi("99999999999999999999999"), Err(IntError::Range));
    }

    #[test]
    fn messages_match_qemu_img() {
        let err = |v: &str| {
            int_option("request count", v, 1, INT_MAX)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("abc"), "Invalid request count specified: 'abc'.");
        assert_eq!(
            err("0"),
            "Invalid request count specified. Must be between 1 and 2147483647."
        );
        assert_eq!(
            err("2147483648"),
            "Invalid request count specified. Must be between 1 and 2147483647."
        );
    }
}
