//! `img bitmap`: persistent dirty bitmaps of a qcow2 image, as
//! `qemu-img bitmap` changes them: the actions run in command-line order
//! and what succeeded is stored even when a later action fails.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use qcow::bitmap::Bitmaps;
use qcow::fs::{open_storage, probe, Format};
use qcow::image::{read_header_cluster, Qcow2};

use super::{close_errors, open_error, parse_format};
use crate::cli::{BitmapAction, BitmapArgs};
use crate::size::cvtnum;

/// An image opened for its bitmaps, with its header as it was before.
fn open_qcow2(name: &str, format: Option<&str>, image_opts: bool, writable: bool) -> Result<Qcow2> {
    let spec = super::image_spec::resolve_windowed(name, format, image_opts)?;
    let path = Path::new(&spec.filename);
    let storage = open_storage(path, writable)
        .and_then(|s| super::windowed(&spec, s))
        .map_err(|e| open_error(name, e))?;
    let format = match &spec.format {
        Some(f) => parse_format(f)?,
        None => probe(&*storage, path).map_err(|e| open_error(name, e))?,
    };
    if format != Format::Qcow2 {
        bail!(
            "Format '{}' does not support persistent dirty bitmaps",
            format.name()
        );
    }
    // As qemu-img (BDRV_O_NO_BACKING): the backing file is not opened.
    let hc = read_header_cluster(&*storage).map_err(|e| open_error(name, e))?;
    Qcow2::open_parts(storage, hc, writable, None, None).map_err(|e| open_error(name, e))
}

/// Runs `img bitmap`.
pub fn run(args: &BitmapArgs) -> Result<i32> {
    if args.actions.is_empty() {
        bail!("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    }
    let add = args.actions.contains(&BitmapAction::Add);
    let merge = args
        .actions
        .iter()
        .any(|a| matches!(a, BitmapAction::Merge(_)));
    let granularity = match &args.granularity {
        Some(g) => Some(cvtnum("granularity", g).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    if granularity.is_some_and(|g| g != 0) && !add {
        bail!("granularity only supported with --add");
    }
    if args.source_format.is_some() && args.source_file.is_none() {
        bail!("-F only supported with -b");
    }
    if args.source_file.is_some() && !merge {
        bail!("Merge bitmap source file only supported with --merge");
    }
    let [filename, bitmap] = args.positional.as_slice() else {
        bail!("Expecting filename and bitmap name");
    };
    // The header as it is before opening for writing takes bitmaps out
    // of force.
    let before = {
        let spec =
            super::image_spec::resolve_windowed(filename, args.format.as_deref(), args.image_opts)?;
        let storage = open_storage(Path::new(&spec.filename), false)
            .and_then(|s| super::windowed(&spec, s))
            .map_err(|e| open_error(filename, e))?;
        read_header_cluster(&*storage).ok()
    };
    let image = open_qcow2(filename, args.format.as_deref(), args.image_opts, true)?;
    let before = before.unwrap_or_else(|| image.header_cluster());
    let source_image = match &args.source_file {
        Some(f) => Some(open_qcow2(f, args.source_format.as_deref(), false, false)?),
        None => None,
    };
    let source = match &source_image {
        Some(s) => Some(Bitmaps::load(s, &s.header_cluster())?),
        None => None,
    };
    let mut bitmaps = Bitmaps::load(&image, &before)?;
    let mut failure = None;
    for action in &args.actions {
        let (op, result) = match action {
            BitmapAction::Add => (
                "add",
                bitmaps.add(bitmap, granularity.filter(|&g| g != 0), true),
            ),
            BitmapAction::Remove => ("remove", bitmaps.remove(bitmap)),
            BitmapAction::Clear => ("clear", bitmaps.clear(bitmap)),
            BitmapAction::Enable => ("enable", bitmaps.set_enabled(bitmap, true)),
            BitmapAction::Disable => ("disable", bitmaps.set_enabled(bitmap, false)),
            BitmapAction::Merge(src) => ("merge", bitmaps.merge(bitmap, source.as_ref(), src)),
        };
        if let Err(e) = result {
            failure = Some(format!("Operation {op} on bitmap {bitmap} failed: {e}"));
            break;
        }
    }
    // As qemu-img reports it: a failed operation at once, then what the
    // close meets.
    if let Some(text) = &failure {
        eprintln!("{}: {text}", crate::program());
    }
    // Like qemu-img, what succeeded is stored on close: first when the
    // image is inactivated, and once more when it is closed if that
    // failed.
    let node = close_errors::node_name(1);
    let mut status = i32::from(failure.is_some());
    if let Err(e) = bitmaps.store() {
        close_errors::report_lost_bitmaps(&node, &e);
        close_errors::report_close_failure();
        if let Err(e) = bitmaps.store() {
            close_errors::report_lost_bitmaps(&node, &e);
        }
        status = 1;
    }
    drop(bitmaps);
    image.close()?;
    Ok(status)
}
