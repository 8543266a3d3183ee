//! `img measure`.

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind};
use qcow::fs::AnyImage;
use qcow::measure::fully_allocated_size;
use qcow::Storage;

use super::open;
use crate::cli::MeasureArgs;
use crate::opts::{CreateOptions, ImageFormat, OptionList, ParsedOptions};
use crate::report::qobject::{to_json_pretty, QDict, QObject};
use crate::report::OutputFormat;

/// Bytes of the source's allocated data, counted as qemu-img does: each
/// data extent extended to the end of its last cluster.
fn allocated_data(source: &AnyImage, cluster_size: u64) -> Result<u64> {
    let size = source.virtual_size();
    let top_file = match source {
        AnyImage::Qcow2(q) if super::looks_preallocated(source) => Some(q.file().clone()),
        _ => None,
    };
    let mut required = 0;
    let mut offset = 0;
    while offset < size {
        let extents = chain_extents(source, offset, size - offset)?;
        if extents.is_empty() {
            break;
        }
        // One batch serves every piece it covers; a piece may start inside
        // an extent when the previous one was rounded up to a cluster.
        for e in extents {
            let end = e.guest_offset + e.len;
            while offset < end {
                let skip = offset.saturating_sub(e.guest_offset);
                let mut pnum = end - offset;
                let mut data = matches!(
                    e.kind,
                    ExtentKind::Data { .. } | ExtentKind::Compressed { .. }
                );
                if let (
                    ExtentKind::Data {
                        host_offset,
                        in_data_file: false,
                    },
                    0,
                    Some(file),
                ) = (e.kind, e.depth, &top_file)
                {
                    // Data clusters in a hole of the image file read as
                    // zero, and qemu-img counts them so.
                    let (is_data, n) = file.data_extent(host_offset + skip, pnum)?;
                    if !is_data {
                        data = false;
                    }
                    pnum = n.clamp(1, pnum);
                }
                if data {
                    pnum = (offset + pnum).div_ceil(cluster_size) * cluster_size - offset;
                    required += offset % cluster_size + pnum;
                }
                offset += pnum;
            }
        }
    }
    Ok(required)
}

/// Runs `img measure`.
pub fn run(args: &MeasureArgs) -> Result<i32> {
    let target: ImageFormat = args.target_format.parse().map_err(|e| anyhow!("{e}"))?;
    let source = match (&args.filename, args.size) {
        (Some(_), Some(_)) => {
            return Err(anyhow!("--size N cannot be used together with a filename."))
        }
        (None, None) => {
            return Err(anyhow!(
                "Either --size N or one filename must be specified."
            ))
        }
        (Some(f), None) => {
            let image = open(f, args.format.as_deref(), false)?;
            if let (Some(name), AnyImage::Qcow2(q)) = (&args.snapshot, &image) {
                q.view_snapshot(name)
                    .map_err(|e| anyhow!("Failed to load snapshot: {e}"))?;
            }
            Some(image)
        }
        (None, Some(_)) => None,
    };
    let list = OptionList::from_args(args.options.iter()).map_err(|e| anyhow!("{e}"))?;
    let parsed = ParsedOptions::parse(target, &list).map_err(|e| anyhow!("{e}"))?;
    let opts = CreateOptions::from_parsed(&parsed).map_err(|e| anyhow!("{e}"))?;
    let virtual_size = match &source {
        Some(s) => s.virtual_size(),
        None => args.size.unwrap_or(0),
    };
    if matches!(
        target,
        ImageFormat::Vpc
            | ImageFormat::Vdi
            | ImageFormat::Vmdk
            | ImageFormat::Qed
            | ImageFormat::Vhdx
    ) {
        return Err(anyhow!(
            "Block driver '{target}' does not support size measurement"
        ));
    }
    let mut out = QDict::new();
    let (required, fully) = match target {
        ImageFormat::Raw
        | ImageFormat::Vpc
        | ImageFormat::Vdi
        | ImageFormat::Vmdk
        | ImageFormat::Qed
        | ImageFormat::Vhdx => {
            let size = virtual_size.div_ceil(512) * 512;
            (size, size)
        }
        ImageFormat::Luks => {
            let header = super::encryption::luks_header_len(&parsed, "")?;
            let size = header + virtual_size.div_ceil(512) * 512;
            (size, size)
        }
        ImageFormat::Qcow2 => {
            let cs = opts.cluster_size_or_default();
            let order = opts.refcount_bits_or_default().trailing_zeros();
            let ext = opts.extended_l2.unwrap_or(false);
            let aligned = virtual_size.div_ceil(cs) * cs;
            let luks = match parsed.get("encrypt.format") {
                Some(f) if f.raw == "luks" => {
                    super::encryption::luks_header_len(&parsed, "encrypt.")?.div_ceil(cs) * cs
                }
                _ => 0,
            };
            let fully = luks + fully_allocated_size(virtual_size, cs, order, ext);
            let data = match &source {
                Some(s) => allocated_data(s, cs)?,
                None => 0,
            };
            // Bitmaps count when both sides can carry them (qcow2 v3).
            let target_v3 = opts.compat_or_default() == crate::opts::Compat::V1_1;
            if let (Some(AnyImage::Qcow2(q)), true) = (&source, target_v3) {
                let hc = q.header_cluster();
                if hc.header.version >= 3 {
                    let entries = qcow::bitmap::list(&**q.file(), &hc)?;
                    let size = qcow::bitmap::measured_size(&entries, q.size(), cs);
                    out.put("bitmaps", QObject::Int(size as i64));
                }
            }
            (fully - aligned + data, fully)
        }
    };
    out.put("required", QObject::Int(required as i64));
    out.put("fully-allocated", QObject::Int(fully as i64));
    match args.output {
        OutputFormat::Json => println!("{}", to_json_pretty(&QObject::Dict(out)).trim_end()),
        OutputFormat::Human => {
            println!("required size: {required}");
            println!("fully allocated size: {fully}");
            if let Some(QObject::Int(size)) = out.get("bitmaps") {
                println!("bitmaps size: {size}");
            }
        }
    }
    Ok(0)
}
