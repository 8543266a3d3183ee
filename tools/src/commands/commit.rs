//! `img commit`: write what an image allocates into its backing file,
//! then (unless `-d`) empty the image so the backing file shows through.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use qcow::backing_name::{target, BackingTarget};
use qcow::device::BlockRead;
use qcow::fs::{open_listing_backing_on, probe, AnyImage, Format};

use super::{close_errors, io_reason, parse_format, report_notices};
use crate::cli::CommitArgs;
use qcow::bitmap::Bitmaps;

/// One image below the top: where it is (its file and any raw window
/// its name puts over it) and its format.
struct Layer {
    path: PathBuf,
    target: BackingTarget,
    format: Format,
}

/// Opens a layer's file, under its window if it has one.
fn open_layer_storage(target: &BackingTarget) -> Result<std::sync::Arc<dyn qcow::Storage>> {
    target
        .open_storage(false)
        .map_err(|e| anyhow!("{}", io_reason(&e)))
}

/// The backing chain below `top` (at `top_path`), nearest first, by the
/// names recorded in each header (relative names resolve against the
/// directory of the image that records them).
fn backing_layers(top_path: &Path, top: &qcow::image::Qcow2) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut hc = top.header_cluster();
    let mut dir = top_path.parent().unwrap_or(Path::new("")).to_path_buf();
    while let Some(name) = hc.backing_file.clone() {
        let target = target(&dir, &name)?;
        let path = target.path.clone();
        let format = match (target.format, hc.backing_format()) {
            (Some(f), _) => f,
            (None, Some(f)) => parse_format(f)?,
            (None, None) => probe(&*open_layer_storage(&target)?, &path)?,
        };
        if layers.len() >= 64 {
            return Err(anyhow!(
                "backing chain of '{}' is too deep",
                top_path.display()
            ));
        }
        let next = if format == Format::Qcow2 {
            let s = open_layer_storage(&target)?;
            Some(qcow::image::read_header_cluster(&*s)?)
        } else {
            None
        };
        dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        layers.push(Layer {
            path,
            target,
            format,
        });
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
    let target = target(dir, &b.name)?;
    let path = target.path.clone();
    let format = match (target.format, b.format) {
        (Some(f), _) => f,
        (None, Some(f)) => parse_format(f)?,
        (None, None) => probe(&*open_layer_storage(&target)?, &path)?,
    };
    Ok(vec![Layer {
        path,
        target,
        format,
    }])
}

/// Runs `img commit`.
pub fn run(args: &CommitArgs) -> Result<i32> {
    let spec = super::image_spec::resolve_windowed(
        &args.filename,
        args.format.as_deref(),
        args.image_opts,
    )?;
    // The headers as they are before opening for writing takes bitmaps
    // out of force: they are stored again on close, as QEMU stores them.
    let top_before = header_before(&spec.filename, spec.window);
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
        target: base_target,
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
    let base_before = match format {
        Format::Qcow2 => header_before(&base_target.path, base_target.window),
        _ => None,
    };
    let open_base = || {
        base_target
            .open_storage(true)
            .and_then(|s| open_listing_backing_on(s, &base_path, Some(format), true, Vec::new()))
            .map(|(image, _)| image)
    };
    let base = open_base().map_err(|e| {
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
        open_base()?
    } else {
        base
    };
    // Everything a layer above the base allocates goes into the base,
    // read through the top so that the nearest layer wins, as QEMU's
    // commit job writes it (`commit_mirror`).
    let bar = super::progress::Progress::new(args.progress && !args.quiet, 1.0);
    let progress = |done: u64| bar.set_fraction(done, size);
    progress(0);
    super::commit_mirror::mirror(top, &base, base_depth, &progress)?;
    let flushed = base.flush();
    report_notices(&base);
    flushed?;
    progress(size);
    bar.end();
    // qemu-img empties a qcow2 top; its vmdk and qed drivers cannot be
    // emptied, and it leaves them as they are.
    if let (false, AnyImage::Qcow2(q)) = (keep, &image) {
        q.make_empty()?;
    }
    let flushed = image.flush();
    report_notices(&image);
    flushed?;
    // Closing stores the bitmaps of both images, as QEMU's inactivation
    // does, and once more when it closes them if that failed; either
    // failure fails the command after the images are closed.
    let mut stores = Vec::new();
    for (ordinal, (layer, before)) in [(&image, &top_before), (&base, &base_before)]
        .into_iter()
        .enumerate()
    {
        if let (AnyImage::Qcow2(q), Some(hc)) = (layer, before) {
            stores.push((
                close_errors::node_name(ordinal as u32 + 1),
                Bitmaps::load(q, hc)?,
            ));
        }
    }
    let mut failed = Vec::new();
    for (node, bitmaps) in &mut stores {
        if let Err(e) = bitmaps.store() {
            close_errors::report_lost_bitmaps(node, &e);
            failed.push((node.clone(), bitmaps));
        }
    }
    for (node, bitmaps) in &mut failed {
        if let Err(e) = bitmaps.store() {
            close_errors::report_lost_bitmaps(node, &e);
        }
    }
    if !failed.is_empty() {
        close_errors::report_close_failure();
        return Ok(1);
    }
    drop(stores);
    drop(base);
    if !args.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

/// The header of the qcow2 image in `path` (under `window`) as it is
/// before img opens it for writing, if it reads as one.
fn header_before(
    path: impl AsRef<Path>,
    window: Option<qcow::raw_window::Window>,
) -> Option<qcow::extensions::HeaderCluster> {
    let target = BackingTarget {
        path: path.as_ref().to_path_buf(),
        format: None,
        window,
    };
    let storage = target.open_storage(false).ok()?;
    qcow::image::read_header_cluster(&*storage).ok()
}
