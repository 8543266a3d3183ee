//! `img compare`.

use anyhow::Result;
use qcow::device::{chain_extents, BlockRead, ChainExtent};

use super::open_named_for;
use crate::cli::CompareArgs;
use crate::report::compare::{CompareError, CompareReport, CompareResult};

const CHUNK: u64 = 1 << 20;

/// One image being compared and the name qemu-img's errors give it.
#[derive(Clone, Copy)]
struct Side<'a> {
    image: &'a dyn BlockRead,
    filename: &'a str,
}

impl Side<'_> {
    /// Reads `buf` at `offset`; a failure is qemu-img's read error (exit 4).
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), CompareError> {
        self.image
            .read_at(buf, offset)
            .map_err(|e| CompareError::Read {
                offset,
                filename: self.filename.to_string(),
                reason: super::read_failure(&e),
            })
    }
}

/// Whether `[offset, offset+len)` of `side` starts allocated, and for how
/// long; a failure is qemu-img's "Sector allocation test failed" (exit 3).
fn allocated_prefix(side: Side, offset: u64, len: u64) -> Result<(bool, u64), CompareError> {
    let extents: Vec<ChainExtent> = chain_extents(side.image, offset, len).map_err(|e| {
        super::read_failure(&e);
        CompareError::AllocationTest {
            filename: side.filename.to_string(),
        }
    })?;
    let Some(first) = extents.first() else {
        return Ok((false, len));
    };
    let mut n = first.len;
    for e in &extents[1..] {
        if e.allocated != first.allocated {
            break;
        }
        n += e.len;
    }
    Ok((first.allocated, n.min(len)))
}

fn first_nonzero(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b != 0)
}

/// Compares `[start, end)`; returns the offset of the first difference.
fn compare_range(
    a: Side,
    b: Side,
    start: u64,
    end: u64,
    strict: bool,
) -> Result<Option<CompareResult>, CompareError> {
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(CHUNK);
        let (alloc_a, na) = allocated_prefix(a, pos, want)?;
        let (alloc_b, nb) = allocated_prefix(b, pos, want)?;
        let n = na.min(nb).max(1).min(want);
        if alloc_a != alloc_b && strict {
            return Ok(Some(CompareResult::StrictBlockStatusMismatch {
                offset: pos,
            }));
        }
        if alloc_a && alloc_b {
            a.read(&mut buf_a[..n as usize], pos)?;
            b.read(&mut buf_b[..n as usize], pos)?;
            if buf_a[..n as usize] != buf_b[..n as usize] {
                let at = buf_a
                    .iter()
                    .zip(&buf_b)
                    .position(|(x, y)| x != y)
                    .expect("buffers differ");
                return Ok(Some(CompareResult::ContentMismatch {
                    offset: pos + (at as u64 / 512) * 512,
                }));
            }
        } else if alloc_a || alloc_b {
            let (side, buf) = if alloc_a {
                (a, &mut buf_a)
            } else {
                (b, &mut buf_b)
            };
            side.read(&mut buf[..n as usize], pos)?;
            if let Some(at) = first_nonzero(&buf[..n as usize]) {
                return Ok(Some(CompareResult::ContentMismatch {
                    offset: pos + at as u64,
                }));
            }
        }
        pos += n;
    }
    Ok(None)
}

/// Checks that `[start, end)` of one image reads as zero.
fn check_zero(side: Side, start: u64, end: u64) -> Result<Option<u64>, CompareError> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(CHUNK);
        let (alloc, n) = allocated_prefix(side, pos, want)?;
        let n = n.max(1).min(want);
        if alloc {
            side.read(&mut buf[..n as usize], pos)?;
            if let Some(at) = first_nonzero(&buf[..n as usize]) {
                return Ok(Some(pos + at as u64));
            }
        }
        pos += n;
    }
    Ok(None)
}

/// Runs `img compare`.
pub fn run(args: &CompareArgs) -> Result<i32> {
    // Both images are read, with the command's -U.
    let how = super::locks::ImageUse::read(args.force_share);
    let a = match open_named_for(&args.filename1, args.a_format.as_deref(), how, false) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{}: {e}", crate::program());
            return Ok(CompareError::Open(e.to_string()).exit_code());
        }
    };
    let b = match open_named_for(&args.filename2, args.b_format.as_deref(), how, false) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{}: {e}", crate::program());
            return Ok(CompareError::Open(e.to_string()).exit_code());
        }
    };
    let (size_a, size_b) = (a.virtual_size(), b.virtual_size());
    let mut report = CompareReport {
        size_mismatch: size_a != size_b,
        result: CompareResult::Identical,
        mismatch_in_excess: false,
    };
    let side_a = Side {
        image: &a,
        filename: &args.filename1,
    };
    let side_b = Side {
        image: &b,
        filename: &args.filename2,
    };
    let outcome: Result<(), CompareError> = (|| {
        if args.strict && size_a != size_b {
            report.result = CompareResult::StrictSizeMismatch;
            return Ok(());
        }
        let common = size_a.min(size_b);
        if let Some(r) = compare_range(side_a, side_b, 0, common, args.strict)? {
            report.result = r;
            return Ok(());
        }
        if size_a != size_b {
            let larger = if size_a > size_b { side_a } else { side_b };
            if let Some(offset) = check_zero(larger, common, size_a.max(size_b))? {
                report.result = CompareResult::ContentMismatch { offset };
                report.mismatch_in_excess = true;
            }
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        eprintln!("{}: {e}", crate::program());
        return Ok(e.exit_code());
    }
    if !args.quiet {
        print!("{}", report.render());
    }
    Ok(report.exit_code())
}
