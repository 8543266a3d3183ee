//! `img commit`: write what an image allocates into its backing file,
//! then (unless `-d`) empty the image so the backing file shows through.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind};
use qcow::fs::{open_image, open_storage, probe, resolve, AnyImage, Format};

use super::{io_reason, parse_format};
use crate::cli::CommitArgs;

/// One image below the top: where it is and its format.
struct Layer {
    path: PathBuf,
    format: Format,
}

/// The backing chain below `top` (at `top_path`), nearest first, by the
/// names recorded in each header (relative names resolve against the
/// directory of the image that records them).
fn backing_layers(top_path: &Path, top: &qcow::image::Qcow2) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut hc = top.header_cluster();
    let mut dir = top_path.parent().unwrap_or(Path::new("")).to_path_buf();
    while let Some(name) = hc.backing_file.clone() {
        let path = resolve(&dir, &name);
        let format = match hc.backing_format() {
            Some(f) => parse_format(f)?,
            None => {
                let s = open_storage(&path, false).map_err(|e| anyhow!("{}", io_reason(&e)))?;
                probe(&*s, &path)?
            }
        };
        if layers.len() >= 64 {
            return Err(anyhow!(
                "backing chain of '{}' is too deep",
                top_path.display()
            ));
        }
        let next = if format == Format::Qcow2 {
            let s = open_storage(&path, false).map_err(|e| anyhow!("{}", io_reason(&e)))?;
            Some(qcow::image::read_header_cluster(&*s)?)
        } else {
            None
        };
        dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        layers.push(Layer { path, format });
        match next {
            Some(h) => hc = h,
            None => break,
        }
    }
    Ok(layers)
}

/// The backing file a vmdk or qed image names (`parentFileNameHint`, the
/// qed header's name): the one layer `img commit` of such an image writes
/// into, as qemu-img's default base.
fn foreign_backing_layer(
    top_path: &Path,
    top: &dyn qcow::formats::ForeignImage,
) -> Result<Vec<Layer>> {
    let Some(b) = top.backing_file() else {
        return Ok(Vec::new());
    };
    let dir = top_path.parent().unwrap_or(Path::new(""));
    let path = resolve(dir, &b.name);
    let format = match b.format {
        Some(f) => parse_format(f)?,
        None => {
            let s = open_storage(&path, false).map_err(|e| anyhow!("{}", io_reason(&e)))?;
            probe(&*s, &path)?
        }
    };
    Ok(vec![Layer { path, format }])
}

/// Runs `img commit`.
pub fn run(args: &CommitArgs) -> Result<i32> {
    let spec = super::image_spec::resolve(&args.filename, args.format.as_deref(), args.image_opts)?;
    let image = super::open_named(
        &args.filename,
        args.format.as_deref(),
        true,
        args.image_opts,
    )?;
    let top_path = Path::new(&spec.filename);
    let layers = match &image {
        AnyImage::Qcow2(q) => backing_layers(top_path, q)?,
        AnyImage::Foreign(_, f) => foreign_backing_layer(top_path, f.as_ref())?,
        AnyImage::Raw(_) => Vec::new(),
    };
    if layers.is_empty() {
        return Err(anyhow!("Image does not have a backing file"));
    }
    // The base is the immediate backing file unless -b names a deeper one;
    // committing into it touches every layer above it, so -b keeps the
    // top's contents (qemu-img: "-b implies -d").
    let (base_depth, keep) = match &args.base {
        None => (1, args.keep),
        Some(b) => {
            let wanted = Path::new(b).canonicalize().ok();
            let found = layers
                .iter()
                .position(|l| wanted.is_some() && l.path.canonicalize().ok() == wanted);
            let Some(index) = found else {
                return Err(anyhow!(
                    "Did not find '{b}' in the backing chain of '{}'",
                    args.filename
                ));
            };
            (index as u32 + 1, true)
        }
    };
    let Layer {
        path: base_path,
        format,
    } = &layers[base_depth as usize - 1];
    let (base_path, format) = (base_path.clone(), *format);
    let base_name = base_path.display().to_string();
    super::locks::lock_image(
        &base_path,
        &base_name,
        format,
        super::locks::ImageUse::WRITE,
    )?;
    let base = open_image(&base_path, Some(format), true).map_err(|e| {
        anyhow!(
            "Could not open '{}': {}",
            base_path.display(),
            io_reason(&e)
        )
    })?;
    if let AnyImage::Qcow2(b) = &base {
        // An encrypted base takes its key from `backing.encrypt.key-secret`
        // (as many `backing.` as it lies deep).
        if let Some(Some(id)) = spec.key_secrets.get(base_depth as usize) {
            b.unlock(&crate::opts::secret::lookup(id)?)
                .map_err(|e| anyhow!("Could not open '{}': {e}", base_path.display()))?;
        }
    }
    let top: &dyn BlockRead = &image;
    let size = top.virtual_size();
    if base.virtual_size() < size {
        match &base {
            AnyImage::Qcow2(b) => b.resize(size, qcow::create::Preallocation::Off)?,
            AnyImage::Raw(r) => r.storage().set_len(size)?,
            AnyImage::Foreign(..) => {
                return Err(anyhow!("Image format driver does not support resize"))
            }
        }
    }
    let base = if format == Format::Raw && base.virtual_size() < size {
        open_image(&base_path, Some(format), true)?
    } else {
        base
    };
    // Everything a layer above the base allocates goes into the base,
    // read through the top so that the nearest layer wins.
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    let bar = super::progress::Progress::new(args.progress && !args.quiet, 1.0);
    let progress = |done: u64| bar.set_fraction(done, size);
    progress(0);
    while pos < size {
        let extents = chain_extents(top, pos, (size - pos).min(1 << 30))?;
        if extents.is_empty() {
            break;
        }
        for e in &extents {
            pos = e.guest_offset + e.len;
            if !e.allocated || e.depth >= base_depth {
                continue;
            }
            // Zeros go down as zeros, as QEMU's commit job (a mirror)
            // writes them: a qcow2 base drops its clusters there.
            if let (ExtentKind::Zero { .. }, AnyImage::Qcow2(b)) = (e.kind, &base) {
                b.write_zeroes(e.guest_offset, e.len, true)
                    .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?;
                progress(e.guest_offset + e.len);
                continue;
            }
            let mut off = e.guest_offset;
            while off < e.guest_offset + e.len {
                let n = (e.guest_offset + e.len - off).min(buf.len() as u64) as usize;
                top.read_at(&mut buf[..n], off)?;
                base.write_at(&buf[..n], off)
                    .map_err(|err| anyhow!("Block job failed: {}", io_reason(&err)))?;
                off += n as u64;
                progress(off);
            }
        }
    }
    base.flush()?;
    drop(base);
    progress(size);
    bar.end();
    // qemu-img empties a qcow2 top; its vmdk and qed drivers cannot be
    // emptied, and it leaves them as they are.
    if let (false, AnyImage::Qcow2(q)) = (keep, &image) {
        q.make_empty()?;
    }
    image.flush()?;
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(0)
}
