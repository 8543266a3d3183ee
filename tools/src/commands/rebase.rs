//! `img rebase`: change an image's backing file. The safe mode first
//! copies into the image every cluster it does not allocate and whose
//! contents differ between the old and the new backing file, so the guest
//! sees the same disk afterwards; `-u` only rewrites the name.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::device::{BlockRead, ExtentKind};
use qcow::fs::{open_image_without_backing, probe, resolve, AnyImage, FileOpener};
use qcow::image::Opener;

use super::locks::{lock_image, ImageUse};
use super::{io_reason, open, open_error, parse_format, report_notices};
use crate::cli::RebaseArgs;

/// Bytes compared at a time.
const CHUNK: u64 = 1 << 20;

fn read_or_zero(backing: Option<&dyn BlockRead>, buf: &mut [u8], offset: u64) -> Result<()> {
    buf.fill(0);
    if let Some(b) = backing {
        let size = b.virtual_size();
        if offset < size {
            let n = ((size - offset) as usize).min(buf.len());
            b.read_at(&mut buf[..n], offset)?;
        }
    }
    Ok(())
}

/// Opens the image for `rebase -u` as qemu-img does (`BDRV_O_NO_BACKING`):
/// only its own metadata changes, so its backing chain is never opened
/// and may be missing.
fn open_unsafe(filename: &str, format: Option<&str>) -> Result<AnyImage> {
    let path = Path::new(filename);
    let format = match format {
        Some(f) => parse_format(f)?,
        None => {
            let storage =
                qcow::fs::open_storage(path, false).map_err(|e| open_error(filename, e))?;
            probe(&*storage, path).map_err(|e| open_error(filename, e))?
        }
    };
    lock_image(path, filename, format, ImageUse::WRITE)?;
    open_image_without_backing(path, Some(format), true).map_err(|e| open_error(filename, e))
}

/// Whether two buffers differ in their first `chunk` bytes, and how far the
/// run of chunks that differ (or that agree) alike goes: qemu-img's
/// compare_buffers.
fn differing_run(old: &[u8], new: &[u8], chunk: usize) -> (bool, usize) {
    let first = old.len().min(chunk);
    let differs = old[..first] != new[..first];
    let mut at = first;
    while at < old.len() {
        let end = (at + chunk).min(old.len());
        if (old[at..end] != new[at..end]) != differs {
            break;
        }
        at = end;
    }
    (differs, at)
}

/// Writes `data` at `offset` compressed, one whole cluster at a time; the
/// image's last cluster, when partial, is padded with zeros as QEMU pads
/// it.
fn write_compressed(q: &qcow::image::Qcow2, data: &[u8], offset: u64) -> Result<()> {
    let cs = q.cluster_size();
    let mut at = 0usize;
    while at < data.len() {
        let pos = offset + at as u64;
        let n = (cs as usize).min(data.len() - at);
        if n as u64 == cs {
            q.write_compressed(pos / cs, &data[at..at + n])?;
        } else {
            let mut padded = vec![0u8; cs as usize];
            padded[..n].copy_from_slice(&data[at..at + n]);
            q.write_compressed(pos / cs, &padded)?;
        }
        at += n;
    }
    Ok(())
}

/// The safe mode's copy, as qemu-img's img_rebase does it: every range the
/// image does not allocate is widened to the image's write alignment (its
/// subclusters, or its clusters when compressing), and each aligned chunk
/// whose old and new backing contents differ is written from the old one
/// (zeroed where the old backing file has ended).
fn copy_differences(
    image: &AnyImage,
    new_backing: Option<&dyn BlockRead>,
    args: &RebaseArgs,
) -> Result<()> {
    let size = image.virtual_size();
    let (cluster_size, subcluster_size) = match image {
        AnyImage::Qcow2(q) => (q.cluster_size(), q.geometry().subcluster_size()),
        AnyImage::Foreign(_, f) => {
            let cs = f.cluster_size().unwrap_or(1 << 16);
            (cs, cs)
        }
        AnyImage::Raw(_) => (1 << 16, 1 << 16),
    };
    let write_align = if args.compress {
        cluster_size
    } else {
        subcluster_size
    };
    let old_backing_size = match image {
        AnyImage::Qcow2(q) => q.backing_image().map_or(0, |b| b.virtual_size()),
        _ => image.backing().map_or(0, |b| b.virtual_size()),
    };
    // One chunk plus the alignment on either side (cluster sizes are
    // bounded by the formats at open).
    let mut old = Vec::with_capacity((CHUNK + 2 * write_align) as usize);
    let mut new = Vec::with_capacity((CHUNK + 2 * write_align) as usize);
    let bar = super::progress::Progress::new(args.progress && !args.quiet, 2.0);
    bar.set_fraction(0, size);
    let mut pos = 0;
    while pos < size {
        // qemu-img's words for a block status that failed.
        let extents = image.extents(pos, (size - pos).min(CHUNK)).map_err(|e| {
            anyhow!(
                "error while reading image metadata: {}",
                super::read_failure(&e)
            )
        })?;
        let Some(first) = extents.first() else {
            break;
        };
        let run = first.len.max(1);
        if !matches!(first.kind, ExtentKind::Unallocated { .. }) {
            pos += run;
            bar.set_fraction(pos, size);
            continue;
        }
        let start = pos / write_align * write_align;
        let end = ((pos + run).div_ceil(write_align) * write_align).min(size);
        let n = (end - start) as usize;
        old.resize(n, 0);
        new.resize(n, 0);
        match image {
            AnyImage::Qcow2(q) => q.read_backing(&mut old, start)?,
            _ => read_or_zero(image.backing(), &mut old, start)?,
        }
        read_or_zero(new_backing, &mut new, start)?;
        let mut done = 0usize;
        while done < n {
            let (differs, len) = differing_run(&old[done..], &new[done..], write_align as usize);
            let at = start + done as u64;
            if differs {
                let data = &old[done..done + len];
                match image {
                    AnyImage::Qcow2(q) if at >= old_backing_size => {
                        q.write_zeroes(at, len as u64, false)?
                    }
                    AnyImage::Qcow2(q) if args.compress => write_compressed(q, data, at)?,
                    _ => image.write_at(data, at)?,
                }
            }
            done += len;
        }
        pos = end;
        bar.set_fraction(pos, size);
    }
    bar.end();
    Ok(())
}

/// Runs `img rebase`.
pub fn run(args: &RebaseArgs) -> Result<i32> {
    let image = if args.unsafe_mode {
        open_unsafe(&args.filename, args.format.as_deref())?
    } else {
        open(&args.filename, args.format.as_deref(), true)?
    };
    // qcow2 and qed record their backing file's name where it can
    // change; QEMU's other drivers cannot change it.
    let supported = match &image {
        AnyImage::Qcow2(_) => true,
        AnyImage::Foreign(format, _) => format.name() == qcow::formats::qed::FORMAT,
        AnyImage::Raw(_) => false,
    };
    if !supported {
        return Err(anyhow!(
            "Could not change the backing file to '{}': Operation not supported",
            args.backing.as_deref().unwrap_or("")
        ));
    }
    if args.compress && !matches!(image, AnyImage::Qcow2(_)) {
        return Err(anyhow!("Compression not supported for this file format"));
    }
    let new_name = args.backing.as_deref().filter(|b| !b.is_empty());
    let dir = Path::new(&args.filename).parent().unwrap_or(Path::new(""));
    let new_format = match (new_name, &args.backing_format) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(f.clone()),
        // Nothing is read from the new file: its format stays unknown,
        // and the change below is refused as qemu-img refuses it.
        (Some(_), None) if args.unsafe_mode => None,
        (Some(name), None) => {
            // qemu-img probes the new backing file's format.
            let path = resolve(dir, name);
            let s = qcow::fs::open_storage(&path, false).map_err(|e| {
                anyhow!(
                    "Could not open new backing file '{name}': {}",
                    io_reason(&e)
                )
            })?;
            Some(probe(&*s, &path)?.name().to_string())
        }
    };
    if !args.unsafe_mode {
        let new_backing: Option<Box<dyn BlockRead>> = match new_name {
            Some(name) => {
                let opener = FileOpener::for_image(Path::new(&args.filename));
                let backing = opener
                    .open_backing(name, new_format.as_deref())
                    .map_err(|e| {
                        anyhow!(
                            "Could not open new backing file '{name}': {}",
                            io_reason(&e)
                        )
                    })?;
                // The command's -U is for this file and its chain only:
                // the image and its old backing chain lock as ever.
                super::locks::lock_new_backing(
                    name,
                    &opener.opened_backing_files(),
                    args.force_share,
                )?;
                Some(backing)
            }
            None => None,
        };
        copy_differences(&image, new_backing.as_deref(), args)?;
    }
    if let (Some(name), None) = (new_name, &args.backing_format) {
        // qemu-img 10 records a backing file only with its format (-F),
        // in both modes; the safe mode has copied what differs by then,
        // which leaves the guest's view as it was.
        return Err(anyhow!(
            "Could not change the backing file to '{name}': backing format must be specified"
        ));
    }
    match &image {
        AnyImage::Qcow2(q) => q.set_backing_name(new_name, new_format.as_deref()),
        AnyImage::Foreign(_, f) => f.set_backing_name(new_name, new_format.as_deref()),
        AnyImage::Raw(_) => unreachable!("refused above"),
    }
    .map_err(|e| anyhow!("Could not change the backing file: {}", io_reason(&e)))?;
    let flushed = image.flush();
    report_notices(&image);
    flushed?;
    Ok(0)
}
