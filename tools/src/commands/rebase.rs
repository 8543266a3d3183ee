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
use super::{io_reason, open, open_error, parse_format};
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
            Some(name) => Some(
                FileOpener::for_image(Path::new(&args.filename))
                    .open_backing(name, new_format.as_deref())
                    .map_err(|e| {
                        anyhow!(
                            "Could not open new backing file '{name}': {}",
                            io_reason(&e)
                        )
                    })?,
            ),
            None => None,
        };
        let size = image.virtual_size();
        let cluster_size = match &image {
            AnyImage::Qcow2(q) => q.cluster_size(),
            AnyImage::Foreign(_, f) => f.cluster_size().unwrap_or(1 << 16),
            AnyImage::Raw(_) => 1 << 16,
        } as usize;
        let mut old = vec![0u8; CHUNK as usize];
        let mut new = vec![0u8; CHUNK as usize];
        let mut pos = 0;
        let bar = super::progress::Progress::new(args.progress && !args.quiet, 2.0);
        let progress = |done: u64| bar.set_fraction(done, size);
        progress(0);
        while pos < size {
            for e in image.extents(pos, (size - pos).min(CHUNK))? {
                if !matches!(e.kind, ExtentKind::Unallocated { .. }) {
                    continue;
                }
                let n = e.len as usize;
                match &image {
                    AnyImage::Qcow2(q) => q.read_backing(&mut old[..n], e.guest_offset)?,
                    _ => read_or_zero(image.backing(), &mut old[..n], e.guest_offset)?,
                }
                read_or_zero(new_backing.as_deref(), &mut new[..n], e.guest_offset)?;
                if old[..n] != new[..n] {
                    // Copy what differs at cluster granularity.
                    let cs = cluster_size;
                    let mut i = 0;
                    while i < n {
                        let start = e.guest_offset as usize + i;
                        let end = ((start / cs + 1) * cs).min(e.guest_offset as usize + n);
                        let (a, b) = (i, i + (end - start));
                        if old[a..b] != new[a..b] {
                            image.write_at(&old[a..b], start as u64)?;
                        }
                        i = b;
                    }
                }
            }
            pos += (size - pos).min(CHUNK);
            progress(pos);
        }
        bar.end();
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
    image.flush()?;
    Ok(0)
}
