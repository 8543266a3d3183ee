//! `img resize`.

use anyhow::{anyhow, Result};
use qcow::device::BlockRead;
use qcow::fs::AnyImage;

use super::create::prealloc;
use crate::cli::ResizeArgs;
use crate::opts::Preallocation;

/// Runs `img resize`.
pub fn run(args: &ResizeArgs) -> Result<i32> {
    let how = super::locks::ImageUse {
        resize: true,
        ..super::locks::ImageUse::WRITE
    };
    let image = super::open_named_for(&args.filename, args.format.as_deref(), how, false)?;
    let current = image.virtual_size();
    let new_size = args
        .size
        .resolve(current, args.shrink)
        .map_err(|e| anyhow!("{e}"))?;
    let mode = args.preallocation.unwrap_or(Preallocation::Off);
    if new_size <= current && mode != Preallocation::Off {
        return Err(anyhow!("Preallocation can only be used for growing images"));
    }
    match &image {
        AnyImage::Qcow2(q) => {
            if new_size % 512 != 0 {
                return Err(anyhow!("The new size must be a multiple of 512"));
            }
            q.resize(new_size, prealloc(mode))
                .map_err(|e| super::operation_failure(&e))?;
        }
        AnyImage::Raw(r) => {
            let storage = r.storage();
            storage.set_len(new_size)?;
            if new_size > current {
                match mode {
                    Preallocation::Falloc => storage.allocate(current, new_size - current)?,
                    Preallocation::Full => {
                        let zeros = vec![0u8; 1 << 20];
                        let mut pos = current;
                        while pos < new_size {
                            let n = (new_size - pos).min(zeros.len() as u64);
                            storage.write_at(&zeros[..n as usize], pos)?;
                            pos += n;
                        }
                    }
                    Preallocation::Metadata => {
                        return Err(anyhow!("Unsupported preallocation mode: metadata"))
                    }
                    Preallocation::Off => {}
                }
            }
            storage.flush()?;
        }
        AnyImage::Foreign(..) => {
            return Err(anyhow!("Image format driver does not support resize"));
        }
    }
    if !args.quiet {
        println!("{}", crate::size::RESIZED_MESSAGE);
    }
    Ok(0)
}
