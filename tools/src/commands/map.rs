//! `img map`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind};
use qcow::fs::{open_storage, resolve, AnyImage};
use qcow::image::read_header_cluster;

use super::open_named;
use crate::cli::MapArgs;
use crate::report::map::{MapEntry, MapPrinter};

/// File names of each layer of a chain (top first), and of the top's
/// external data file.
pub fn layer_names(filename: &str, image: &AnyImage) -> (Vec<String>, Option<String>) {
    let mut names = vec![filename.to_string()];
    let mut data_file = None;
    if let AnyImage::Qcow2(q) = image {
        let hc = q.header_cluster();
        let dir = Path::new(filename).parent().unwrap_or(Path::new(""));
        data_file = hc.data_file().map(str::to_string);
        let mut next = hc.backing_file.map(|b| resolve(dir, &b));
        let mut layer: Option<&dyn BlockRead> = q.backing_image();
        while let (Some(path), Some(l)) = (next.take(), layer) {
            names.push(path.display().to_string());
            if l.format_name() == "qcow2" {
                if let Ok(s) = open_storage(&path, false) {
                    if let Ok(hc) = read_header_cluster(&*s) {
                        let dir = path.parent().unwrap_or(Path::new(""));
                        next = hc.backing_file.map(|b| resolve(dir, &b));
                    }
                }
            }
            layer = l.backing();
        }
    }
    (names, data_file)
}

/// Runs `img map`.
pub fn run(args: &MapArgs) -> Result<i32> {
    let spec = super::image_spec::resolve(&args.filename, args.format.as_deref(), args.image_opts)?;
    let image = open_named(
        &args.filename,
        args.format.as_deref(),
        false,
        args.image_opts,
    )?;
    let size = image.virtual_size();
    let start = args.start_offset.min(size);
    let end = match args.max_length {
        Some(len) => start.saturating_add(len).min(size),
        None => size,
    };
    let (names, data_file) = layer_names(&spec.filename, &image);
    let file_storage = match &image {
        AnyImage::Qcow2(q) if super::looks_preallocated(&image) => Some(q.file().clone()),
        _ => None,
    };
    let stdout = std::io::stdout().lock();
    let mut printer = MapPrinter::new(stdout, args.output, start).map_err(|e| anyhow!("{e}"))?;
    let mut pos = start;
    let mut result = Ok(());
    while pos < end {
        let extents = chain_extents(&image, pos, end - pos)?;
        if extents.is_empty() {
            break;
        }
        for e in extents {
            let filename = names.get(e.depth as usize).cloned();
            let mut entry = MapEntry {
                start: e.guest_offset,
                length: e.len,
                depth: e.depth.into(),
                present: e.allocated,
                ..MapEntry::default()
            };
            match e.kind {
                ExtentKind::Data {
                    host_offset,
                    in_data_file,
                } => {
                    entry.data = true;
                    entry.offset = Some(host_offset);
                    entry.filename = if in_data_file {
                        data_file.clone()
                    } else {
                        filename
                    };
                    // A data cluster in a hole of the top image's file
                    // reads as zero, and qemu says so.
                    if e.depth == 0 && !in_data_file {
                        if let Some(s) = &file_storage {
                            if let Ok((false, n)) = s.data_extent(host_offset, e.len) {
                                if n >= e.len {
                                    entry.zero = true;
                                }
                            }
                        }
                    }
                }
                ExtentKind::Compressed { .. } => {
                    entry.data = true;
                    entry.compressed = true;
                    entry.filename = filename;
                }
                ExtentKind::Zero { host_offset } => {
                    entry.zero = true;
                    entry.offset = host_offset;
                    entry.filename = filename;
                }
                // Nothing in the chain allocates it: reads as zero.
                ExtentKind::Unallocated { host_offset } => {
                    entry.zero = true;
                    entry.offset = host_offset;
                    if host_offset.is_some() {
                        entry.filename = filename;
                    }
                }
            }
            pos = e.guest_offset + e.len;
            if let Err(err) = printer.push(entry) {
                result = Err(err);
                break;
            }
        }
        if result.is_err() {
            break;
        }
    }
    match result.and_then(|()| printer.finish().map(|_| ())) {
        Ok(()) => Ok(0),
        Err(e) => Err(anyhow!("{e}")),
    }
}
