//! `img map`.

use std::path::Path;

use anyhow::Result;
use qcow::device::{chain_extents, BlockRead, ChainExtent, ExtentKind};
use qcow::fs::{open_storage, resolve, AnyImage};
use qcow::image::read_header_cluster;

use super::open_named_for;
use crate::cli::MapArgs;
use crate::report::map::{MapEntry, MapPrinter};

/// File names of each layer of a chain (top first); the other files of a
/// layer (a data file, vmdk extents) are named by the layer itself
/// ([`BlockRead::extent_file`]).
pub fn layer_names(filename: &str, image: &AnyImage) -> Vec<String> {
    let mut names = vec![filename.to_string()];
    if let AnyImage::Qcow2(q) = image {
        let hc = q.header_cluster();
        let dir = Path::new(filename).parent().unwrap_or(Path::new(""));
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
    names
}

/// The layer `depth` steps down `top`'s backing chain (0: `top`).
fn layer_at(top: &dyn BlockRead, depth: u32) -> Option<&dyn BlockRead> {
    let mut layer = Some(top);
    for _ in 0..depth {
        layer = layer?.backing();
    }
    layer
}

/// Splits `len` bytes at `host_offset` of `storage` into runs of data
/// and holes (true), as QEMU's block status asks a file.
fn hole_runs(
    storage: &dyn qcow::storage::Storage,
    host_offset: u64,
    len: u64,
) -> Result<Vec<(u64, bool)>> {
    let mut runs: Vec<(u64, bool)> = Vec::new();
    let mut done = 0;
    while done < len {
        let (data, n) = storage.data_extent(host_offset + done, len - done)?;
        let n = n.clamp(1, len - done);
        match runs.last_mut() {
            Some(last) if last.1 != data => last.0 += n,
            _ => runs.push((n, !data)),
        }
        done += n;
    }
    Ok(runs)
}

/// QEMU's request alignment under O_DIRECT (its usual probe result).
const DIRECT_IO_ALIGNMENT: u64 = 512;

/// With O_DIRECT QEMU may not report part of a sector: a raw file's data
/// that ends inside a sector (at a file end that is not sector-aligned)
/// is reported up to the sector's end (file-posix's block status rounds
/// it up), taken from the extents after it.
fn round_data_to_sectors(extents: &mut Vec<ChainExtent>, end: u64) {
    let mut i = 0;
    while i < extents.len() {
        let e = &extents[i];
        let e_end = e.guest_offset + e.len;
        if matches!(e.kind, ExtentKind::Data { .. }) && !e_end.is_multiple_of(DIRECT_IO_ALIGNMENT) {
            let target = e_end.next_multiple_of(DIRECT_IO_ALIGNMENT).min(end);
            extents[i].len = target - extents[i].guest_offset;
            let mut j = i + 1;
            while j < extents.len() && extents[j].guest_offset < target {
                let next_end = extents[j].guest_offset + extents[j].len;
                if next_end <= target {
                    extents.remove(j);
                } else {
                    extents[j].len = next_end - target;
                    extents[j].guest_offset = target;
                    j += 1;
                }
            }
        }
        i += 1;
    }
}

/// Runs `img map`.
pub fn run(args: &MapArgs) -> Result<i32> {
    let spec = super::image_spec::resolve(&args.filename, args.format.as_deref(), args.image_opts)?;
    let image = open_named_for(
        &args.filename,
        args.format.as_deref(),
        super::locks::ImageUse::read(args.force_share),
        args.image_opts,
    )?;
    let size = image.virtual_size();
    let start = args.start_offset.min(size);
    let end = match args.max_length {
        Some(len) => start.saturating_add(len).min(size),
        None => size,
    };
    let names = layer_names(&spec.filename, &image);
    let file_storage = match &image {
        AnyImage::Qcow2(q) if super::looks_preallocated(&image) => Some(q.file().clone()),
        _ => None,
    };
    // Writes to a closed stdout are dropped and the map goes on to its
    // end, as qemu-img's printf calls do (tools::stdio).
    let mut printer = MapPrinter::new(crate::stdio::Stdout, args.output, start)?;
    let mut pos = start;
    let mut result = Ok(());
    while pos < end {
        // qemu-img's words for a block status that failed.
        let mut extents = chain_extents(&image, pos, end - pos).map_err(|e| {
            anyhow::anyhow!("Could not read file metadata: {}", super::read_failure(&e))
        })?;
        if spec.direct_io && matches!(image, AnyImage::Raw(_)) {
            round_data_to_sectors(&mut extents, end);
        }
        if extents.is_empty() {
            break;
        }
        for e in extents {
            let filename = names.get(e.depth as usize).cloned();
            // Runs of data and holes (true) in the extent's file, when the
            // entry is split by them.
            let mut file_runs: Vec<(u64, bool)> = Vec::new();
            let mut entry = MapEntry {
                start: e.guest_offset,
                length: e.len,
                depth: e.depth.into(),
                present: e.allocated,
                ..MapEntry::default()
            };
            match e.kind {
                ExtentKind::Data { host_offset, file } => {
                    entry.data = true;
                    entry.offset = Some(host_offset);
                    entry.filename = if file.is_image() {
                        filename
                    } else {
                        // A file of the layer's own (a qcow2 data file, a
                        // vmdk extent): qemu-img names that file.
                        layer_at(&image, e.depth)
                            .and_then(|l| l.extent_file(file))
                            .and_then(|f| f.name)
                            .or(filename)
                    };
                    // A layer whose driver asks the file about its data
                    // (a static vdi): the file's holes are data reading
                    // as zero.
                    if let Some(f) = layer_at(&image, e.depth)
                        .filter(|l| l.asks_file_about_data(file))
                        .and_then(|l| l.extent_file(file))
                    {
                        file_runs = hole_runs(&*f.storage, host_offset, e.len)?;
                    }
                    // A data cluster in a hole of the top image's file
                    // reads as zero, and qemu says so.
                    if e.depth == 0 && file.is_image() {
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
                    // A hole of a file holding the guest's bytes as they
                    // are (a vmdk flat extent): QEMU's driver calls it
                    // data and asks the file, which says zero.
                    if host_offset.is_some()
                        && layer_at(&image, e.depth).is_some_and(|l| l.file_holes_are_data())
                    {
                        entry.data = true;
                    }
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
            // A layer whose driver gives no host offsets (an encrypted
            // qcow2): qemu-img shows none, nor the file that holds them.
            if entry.offset.is_some()
                && layer_at(&image, e.depth).is_some_and(|l| l.hides_host_offsets())
            {
                entry.offset = None;
                entry.filename = None;
            }
            pos = e.guest_offset + e.len;
            let mut at = 0;
            for (len, hole) in file_runs {
                let mut part = entry.clone();
                part.start += at;
                part.length = len;
                part.offset = part.offset.map(|o| o + at);
                part.zero = hole;
                at += len;
                result = printer.push(part);
                if result.is_err() {
                    break;
                }
            }
            if at == 0 {
                result = printer.push(entry);
            }
            if result.is_err() {
                break;
            }
        }
        if result.is_err() {
            break;
        }
    }
    result.and_then(|()| printer.finish().map(|_| ()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::device::FileIndex;

    fn extent(guest_offset: u64, len: u64, data: bool) -> ChainExtent {
        ChainExtent {
            guest_offset,
            len,
            depth: 0,
            allocated: true,
            kind: if data {
                ExtentKind::Data {
                    host_offset: guest_offset,
                    file: FileIndex::IMAGE,
                }
            } else {
                ExtentKind::Zero {
                    host_offset: Some(guest_offset),
                }
            },
        }
    }

    fn spans(extents: &[ChainExtent]) -> Vec<(u64, u64)> {
        extents.iter().map(|e| (e.guest_offset, e.len)).collect()
    }

    #[test]
    fn direct_io_reports_data_to_the_end_of_its_sector() {
        let mut tail = vec![
            extent(0, 4096, false),
            extent(4096, 4095, true),
            extent(8191, 1, false),
        ];
        round_data_to_sectors(&mut tail, 8192);
        assert_eq!(spans(&tail), [(0, 4096), (4096, 4096)]);
        // A hole longer than the rest of the sector keeps its remainder.
        let mut inner = vec![extent(0, 700, true), extent(700, 1348, false)];
        round_data_to_sectors(&mut inner, 2048);
        assert_eq!(spans(&inner), [(0, 1024), (1024, 1024)]);
        // Aligned data is left alone.
        let mut aligned = vec![extent(0, 512, true), extent(512, 512, false)];
        round_data_to_sectors(&mut aligned, 1024);
        assert_eq!(spans(&aligned), [(0, 512), (512, 512)]);
    }
}
