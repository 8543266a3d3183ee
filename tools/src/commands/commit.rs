//! `img commit`: write what an image allocates into its backing file,
//! then (unless `-d`) empty the image so the backing file shows through.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::device::{BlockRead, ExtentKind};
use qcow::fs::{open_image, open_storage, probe, resolve, AnyImage, Format};

use super::{io_reason, open, parse_format};
use crate::cli::CommitArgs;

/// Runs `img commit`.
pub fn run(args: &CommitArgs) -> Result<i32> {
    let image = open(&args.filename, args.format.as_deref(), true)?;
    let AnyImage::Qcow2(q) = &image else {
        return Err(anyhow!("Image does not have a backing file"));
    };
    let hc = q.header_cluster();
    let Some(backing) = hc.backing_file.clone() else {
        return Err(anyhow!("Image does not have a backing file"));
    };
    let dir = Path::new(&args.filename).parent().unwrap_or(Path::new(""));
    let base_path = resolve(dir, &backing);
    if let Some(b) = &args.base {
        let same = Path::new(b).canonicalize().ok() == base_path.canonicalize().ok();
        if !same {
            return Err(anyhow!(
                "Committing into a backing file other than the image's own ('{backing}') is not supported yet"
            ));
        }
    }
    let format = match hc.backing_format() {
        Some(f) => parse_format(f)?,
        None => {
            let s = open_storage(&base_path, false).map_err(|e| anyhow!("{}", io_reason(&e)))?;
            probe(&*s)?
        }
    };
    let base = open_image(&base_path, Some(format), true).map_err(|e| {
        anyhow!(
            "Could not open '{}': {}",
            base_path.display(),
            io_reason(&e)
        )
    })?;
    let size = q.size();
    if base.virtual_size() < size {
        match &base {
            AnyImage::Qcow2(b) => b.resize(size, qcow::create::Preallocation::Off)?,
            AnyImage::Raw(r) => r.storage().set_len(size)?,
        }
    }
    let base = if format == Format::Raw && base.virtual_size() < size {
        open_image(&base_path, Some(format), true)?
    } else {
        base
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let extents = q.extents(pos, (size - pos).min(1 << 30))?;
        if extents.is_empty() {
            break;
        }
        for e in &extents {
            pos = e.guest_offset + e.len;
            if matches!(e.kind, ExtentKind::Unallocated { .. }) {
                continue;
            }
            let mut off = e.guest_offset;
            while off < e.guest_offset + e.len {
                let n = (e.guest_offset + e.len - off).min(buf.len() as u64) as usize;
                q.read_at(&mut buf[..n], off)?;
                base.write_at(&buf[..n], off)
                    .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?;
                off += n as u64;
            }
        }
    }
    base.flush()?;
    drop(base);
    if !args.keep {
        q.make_empty()?;
    }
    image.flush()?;
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(0)
}
