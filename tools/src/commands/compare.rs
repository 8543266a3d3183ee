//! `img compare`, as qemu-img 10 compares: both images are walked by the
//! block status of their whole chains ([`super::block_status`]), and in
//! strict mode (`-s`) the first offset where the two status words differ
//! is a failure by itself. Ranges both call zero are not read; ranges
//! both allocate are read and compared; where one side allocates and the
//! other does not, the allocated side must read as zero.

use anyhow::Result;
use qcow::device::BlockRead;

use super::block_status::{ChainStatus, Status};
use super::open_named_for;
use crate::cli::CompareArgs;
use crate::report::compare::{CompareError, CompareReport, CompareResult};

/// qemu-img's IO_BUF_SIZE: the most it reads of each image at a time.
const CHUNK: u64 = 2 << 20;
/// qemu-img reports mismatches by sectors counted from the chunk read.
const SECTOR: usize = 512;

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

    /// The chain's block status at `offset` up to the image's end; a
    /// failure is qemu-img's "Sector allocation test failed" (exit 3).
    fn status(&self, chain: &mut ChainStatus, offset: u64) -> Result<Status, CompareError> {
        let size = self.image.virtual_size();
        chain.status(offset, size - offset).map_err(|e| {
            super::read_failure(&e);
            CompareError::AllocationTest {
                filename: self.filename.to_string(),
            }
        })
    }
}

/// The first non-zero sector of `buf`, as qemu-img's find_nonzero finds it.
fn first_nonzero_sector(buf: &[u8]) -> Option<usize> {
    buf.chunks(SECTOR)
        .position(|s| s.iter().any(|&b| b != 0))
        .map(|i| i * SECTOR)
}

/// Reads `len` bytes of `side` at `offset` and finds the first non-zero
/// sector (qemu-img's check_empty_sectors).
fn nonzero_at(
    side: Side,
    buf: &mut [u8],
    offset: u64,
    len: u64,
) -> Result<Option<u64>, CompareError> {
    let buf = &mut buf[..len as usize];
    side.read(buf, offset)?;
    Ok(first_nonzero_sector(buf).map(|at| offset + at as u64))
}

/// Compares the common part `[0, end)`; returns where it stopped.
fn compare_common(
    a: Side,
    b: Side,
    end: u64,
    strict: bool,
) -> Result<Option<CompareResult>, CompareError> {
    let (mut chain_a, mut chain_b) = (ChainStatus::new(a.image), ChainStatus::new(b.image));
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < end {
        let status_a = a.status(&mut chain_a, pos)?;
        let status_b = b.status(&mut chain_b, pos)?;
        let mut chunk = status_a.len.min(status_b.len).max(1);
        if strict && status_a.flags != status_b.flags {
            return Ok(Some(CompareResult::StrictBlockStatusMismatch {
                offset: pos,
            }));
        }
        if status_a.zero() && status_b.zero() {
            // Both read as zero: nothing to read.
        } else if status_a.allocated() == status_b.allocated() {
            if status_a.allocated() {
                chunk = chunk.min(CHUNK);
                let n = chunk as usize;
                a.read(&mut buf_a[..n], pos)?;
                b.read(&mut buf_b[..n], pos)?;
                let differs = buf_a[..n]
                    .chunks(SECTOR)
                    .zip(buf_b[..n].chunks(SECTOR))
                    .position(|(x, y)| x != y);
                if let Some(sector) = differs {
                    return Ok(Some(CompareResult::ContentMismatch {
                        offset: pos + (sector * SECTOR) as u64,
                    }));
                }
            }
        } else {
            chunk = chunk.min(CHUNK);
            let side = if status_a.allocated() { a } else { b };
            if let Some(offset) = nonzero_at(side, &mut buf_a, pos, chunk)? {
                return Ok(Some(CompareResult::ContentMismatch { offset }));
            }
        }
        pos += chunk;
    }
    Ok(None)
}

/// Checks that `[start, end)` of the larger image reads as zero where it
/// allocates anything but zeros.
fn check_excess(side: Side, start: u64, end: u64) -> Result<Option<u64>, CompareError> {
    let mut chain = ChainStatus::new(side.image);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = start;
    while pos < end {
        let status = side.status(&mut chain, pos)?;
        let mut chunk = status.len.max(1);
        if status.allocated() && !status.zero() {
            chunk = chunk.min(CHUNK);
            if let Some(offset) = nonzero_at(side, &mut buf, pos, chunk)? {
                return Ok(Some(offset));
            }
        }
        pos += chunk;
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
        if let Some(r) = compare_common(side_a, side_b, common, args.strict)? {
            report.result = r;
            return Ok(());
        }
        if size_a != size_b {
            let larger = if size_a > size_b { side_a } else { side_b };
            if let Some(offset) = check_excess(larger, common, size_a.max(size_b))? {
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
