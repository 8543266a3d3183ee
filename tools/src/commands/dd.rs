//! `img dd`: copies an image into a new one block by block, as dd(1)
//! copies files and as qemu-img's `img_dd` does: `bs=` (default 512),
//! `count=` and `skip=` in blocks, `if=` and `of=`; the output is created
//! with the size left to copy and every block is written, zeros included.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::device::BlockRead;

use super::{io_reason, open_named};
use crate::cli::DdArgs;
use crate::opts::{CreateOptions, ImageFormat, ParsedOptions};
use crate::size::cvtnum_full;

/// Largest `bs=`, as qemu-img bounds it (a C `int`).
const MAX_BLOCK_SIZE: i64 = i32::MAX as i64;
/// Most bytes held in memory at once: a larger block is copied in pieces
/// of this size (the same bytes land in the same places).
const MAX_CHUNK: u64 = 4 << 20;

/// The operands, parsed as qemu-img parses them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DdOperands {
    block_size: u64,
    count: Option<u64>,
    skip: Option<u64>,
    input: String,
    output: String,
}

/// Parses `key=value` operands in order, the last of a key winning.
fn parse_operands(operands: &[String]) -> Result<DdOperands> {
    let mut block_size = 512;
    let (mut count, mut skip, mut input, mut output) = (None, None, None, None);
    for operand in operands {
        let Some((key, value)) = operand.split_once('=') else {
            return Err(anyhow!("unrecognized operand {operand}"));
        };
        let cvt = |e: crate::size::CvtnumError| anyhow!("{e}");
        match key {
            "bs" => block_size = cvtnum_full("bs", value, 1, MAX_BLOCK_SIZE).map_err(cvt)?,
            "count" => count = Some(parse_block_count("count", value)?),
            "skip" => skip = Some(parse_block_count("skip", value)?),
            "if" => input = Some(value.to_string()),
            "of" => output = Some(value.to_string()),
            _ => return Err(anyhow!("unrecognized operand {key}")),
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err(anyhow!("Must specify both input and output files"));
    };
    Ok(DdOperands {
        block_size,
        count,
        skip,
        input,
        output,
    })
}

/// A `count=` or `skip=` number as qemu-img 10.0.2 (Debian's build)
/// reads it: a whole C integer (`strtoll` with base 0: leading blanks, a
/// sign, `0x` hex and `0` octal; nothing after it, no size suffix), from
/// 0 to `i64::MAX`.
fn parse_block_count(name: &str, value: &str) -> Result<u64> {
    let invalid = || anyhow!("Invalid {name} specified: '{value}'.");
    let out_of_range = || {
        anyhow!(
            "Invalid {name} specified. Must be between 0 and {}.",
            i64::MAX
        )
    };
    let text = value.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .filter(|h| h.starts_with(|c: char| c.is_ascii_hexdigit()))
    {
        (16, hex)
    } else if text.len() > 1 && text.starts_with('0') {
        (8, &text[1..])
    } else {
        (10, text)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(invalid());
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| out_of_range())?;
    if magnitude > i64::MAX as u64 || (negative && magnitude != 0) {
        return Err(out_of_range());
    }
    Ok(magnitude)
}

/// What to copy: input bytes `start..end` to the output's start, or
/// `None` for a skip past the end (an empty output and a warning).
fn copy_range(input_size: u64, ops: &DdOperands) -> Option<(u64, u64)> {
    let bs = ops.block_size;
    let mut end = input_size;
    // qemu-img counts `count` from the start of the input, not from the
    // skipped-to block; a count that overflows is no limit.
    if let Some(count) = ops.count {
        if let Some(limit) = count.checked_mul(bs) {
            if limit <= i64::MAX as u64 && limit < end {
                end = limit;
            }
        }
    }
    match ops.skip {
        None => Some((0, end)),
        Some(skip) => match skip.checked_mul(bs) {
            Some(start) if start <= i64::MAX as u64 && start <= end => Some((start, end)),
            _ => None,
        },
    }
}

/// Runs `img dd`.
pub fn run(args: &DdArgs) -> Result<i32> {
    let ops = parse_operands(&args.operands)?;
    let input = super::open_named_for(
        &ops.input,
        args.format.as_deref(),
        super::locks::ImageUse::read(args.force_share),
        args.image_opts,
    )?;
    let format: ImageFormat = args
        .target_format
        .parse()
        .map_err(|_| anyhow!("Unknown file format"))?;
    let range = copy_range(input.virtual_size(), &ops);
    let out_size = range.map_or(0, |(start, end)| end - start);
    let parsed = ParsedOptions::empty(format);
    let mut opts = CreateOptions::from_parsed(&parsed)
        .map_err(|e| anyhow!("{}: error while creating output image: {e}", ops.output))?;
    opts.validate(format)
        .map_err(|e| anyhow!("{}: error while creating output image: {e}", ops.output))?;
    // Held until the output is open (which holds its own locks).
    let _create_lock = super::locks::lock_for_create(
        Path::new(&ops.output),
        &format!("{}: error while creating output image", ops.output),
    )?;
    super::create::create_image_with(&ops.output, format, &opts, out_size, false)
        .map_err(|e| anyhow!("{}: error while creating output image: {e:#}", ops.output))?;
    let output = open_named(&ops.output, Some(&args.target_format), true, false)?;
    let Some((start, end)) = range else {
        eprintln!(
            "{}: {}: cannot skip to specified offset",
            crate::program(),
            ops.input
        );
        return Ok(0);
    };
    let mut buf = vec![0u8; ops.block_size.min(MAX_CHUNK) as usize];
    let mut in_pos = start;
    while in_pos < end {
        let len = (end - in_pos).min(buf.len() as u64);
        let piece = &mut buf[..len as usize];
        input.read_at(piece, in_pos).map_err(|e| {
            anyhow!(
                "error while reading from input image file: {}",
                super::read_failure(&e)
            )
        })?;
        output.write_at(piece, in_pos - start).map_err(|e| {
            anyhow!(
                "error while writing to output image file: {}",
                io_reason(&e)
            )
        })?;
        in_pos += len;
    }
    output.flush().map_err(|e| {
        anyhow!(
            "error while writing to output image file: {}",
            io_reason(&e)
        )
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(args: &[&str]) -> Result<DdOperands> {
        parse_operands(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn operands_parse_as_qemu_img_parses_them() {
        let o = ops(&["if=a", "of=b", "bs=4k", "count=3", "skip=30", "bs=1k"]).unwrap();
        assert_eq!(o.block_size, 1024);
        assert_eq!(o.count, Some(3));
        assert_eq!(o.skip, Some(30));
        assert_eq!(
            ops(&["if=a", "nope"]).unwrap_err().to_string(),
            "unrecognized operand nope"
        );
        assert_eq!(
            ops(&["if=a", "sk=1"]).unwrap_err().to_string(),
            "unrecognized operand sk"
        );
        assert_eq!(
            ops(&["if=a"]).unwrap_err().to_string(),
            "Must specify both input and output files"
        );
        assert!(ops(&["if=a", "of=b", "bs=0"]).is_err());
        assert!(ops(&["if=a", "of=b", "bs=3G"]).is_err());
    }

    #[test]
    fn counts_are_whole_c_integers_as_the_reference_qemu_img_reads_them() {
        let n = |v: &str| parse_block_count("skip", v).map_err(|e| e.to_string());
        assert_eq!(n("30"), Ok(30));
        assert_eq!(n(" +1"), Ok(1));
        assert_eq!(n("0x10"), Ok(16));
        assert_eq!(n("010"), Ok(8));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("30K"), Err("Invalid skip specified: '30K'.".into()));
        assert_eq!(n("1 "), Err("Invalid skip specified: '1 '.".into()));
        assert_eq!(n(""), Err("Invalid skip specified: ''.".into()));
        let range = "Invalid skip specified. Must be between 0 and 9223372036854775807.";
        assert_eq!(n("-1"), Err(range.into()));
        assert_eq!(n("99999999999999999999"), Err(range.into()));
    }

    #[test]
    fn count_counts_from_the_start_and_skip_past_the_end_copies_nothing() {
        let o = |count, skip| DdOperands {
            block_size: 512,
            count,
            skip,
            input: "a".into(),
            output: "b".into(),
        };
        assert_eq!(copy_range(4096, &o(None, None)), Some((0, 4096)));
        assert_eq!(copy_range(4096, &o(Some(4), Some(1))), Some((512, 2048)));
        assert_eq!(copy_range(4096, &o(None, Some(8))), Some((4096, 4096)));
        assert_eq!(copy_range(4096, &o(None, Some(9))), None);
        assert_eq!(copy_range(4096, &o(Some(u64::MAX), None)), Some((0, 4096)));
        assert_eq!(copy_range(4096, &o(None, Some(u64::MAX))), None);
    }
}
