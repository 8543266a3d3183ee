//! `img info`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::fs::{open_image_no_backing, probe, resolve, AnyImage};
use qcow::snapshot_table::SnapshotTable;
use qcow::Storage;

use super::{open_error, parse_format};
use crate::cli::InfoArgs;
use crate::opts::{Compat, CompressionType};
use crate::report::info::{
    render_chain_human, render_chain_json, ChildInfo, FormatSpecific, ImageInfo, Qcow2Info,
    SnapshotInfo,
};
use crate::report::OutputFormat;

/// Describes one opened image.
pub fn describe(filename: &str, image: &AnyImage) -> Result<ImageInfo> {
    let mut info = ImageInfo {
        filename: filename.to_string(),
        format: image.format().name().to_string(),
        virtual_size: qcow::device::BlockRead::virtual_size(image),
        dirty_flag: Some(false),
        ..ImageInfo::default()
    };
    let (storage, data_file) = match image {
        AnyImage::Raw(r) => (r.storage().clone(), None),
        AnyImage::Qcow2(q) => (q.file().clone(), q.data_file().cloned()),
        AnyImage::Foreign(_, f) => {
            super::info_foreign::describe(&mut info, &**f);
            (f.storage().clone(), None)
        }
    };
    let file_len = storage.len()?;
    let file_actual = storage.allocated_bytes();
    info.actual_size = match (file_actual, &data_file) {
        (Some(a), Some(d)) => Some(a + d.allocated_bytes().unwrap_or(0)),
        (a, _) => a,
    };
    if let AnyImage::Qcow2(q) = image {
        let hc = q.header_cluster();
        let h = &hc.header;
        info.cluster_size = Some(h.cluster_size());
        info.dirty_flag = Some(h.is_dirty());
        if let Some(b) = &hc.backing_file {
            info.backing_filename = Some(b.clone());
            let dir = Path::new(filename).parent().unwrap_or(Path::new(""));
            info.full_backing_filename = Some(resolve(dir, b).display().to_string());
            info.backing_filename_format = hc.backing_format().map(str::to_string);
        }
        let compat = if h.version >= 3 {
            Compat::V1_1
        } else {
            Compat::V0_10
        };
        let ctype = match h.compression_type {
            qcow::header::CompressionType::Zlib => CompressionType::Zlib,
            qcow::header::CompressionType::Zstd => CompressionType::Zstd,
        };
        let mut q2 = Qcow2Info::new(compat, h.refcount_bits().into(), ctype);
        if h.version >= 3 {
            q2.lazy_refcounts = Some(h.lazy_refcounts());
            q2.corrupt = Some(h.is_corrupt());
            q2.extended_l2 = Some(h.extended_l2());
            if let Some(df) = hc.data_file() {
                q2.data_file = Some(df.to_string());
                q2.data_file_raw = Some(h.data_file_raw());
            }
        }
        if h.version >= 3 {
            let entries = qcow::bitmap::list(&**q.file(), &hc)
                .map_err(|e| anyhow!("Could not open '{filename}': {e}"))?;
            if !entries.is_empty() {
                q2.bitmaps = Some(
                    entries
                        .iter()
                        .map(|e| {
                            let mut flags = Vec::new();
                            if e.flags & qcow::bitmap::FLAG_IN_USE != 0 {
                                flags.push("in-use".to_string());
                            }
                            if e.flags & qcow::bitmap::FLAG_AUTO != 0 {
                                flags.push("auto".to_string());
                            }
                            crate::report::BitmapInfo {
                                name: e.name.clone(),
                                granularity: e.granularity() as u32,
                                flags,
                            }
                        })
                        .collect(),
                );
            }
        }
        match h.crypt_method {
            0 => {}
            qcow::crypto::CRYPT_AES => q2.encrypt = Some(crate::report::encrypt::aes_info()),
            _ => {
                let luks = q
                    .luks_header()
                    .map_err(|e| anyhow!("Could not open '{filename}': {e}"))?;
                q2.encrypt = luks.map(|l| crate::report::encrypt::luks_info(&l, true));
            }
        }
        if h.crypt_method != 0 {
            info.encrypted = Some(true);
        }
        info.format_specific = Some(FormatSpecific::Qcow2(q2));
        if h.nb_snapshots > 0 {
            let snaps = SnapshotTable::parse(
                &**q.file(),
                h.snapshots_offset,
                h.nb_snapshots,
                h.cluster_size(),
            )
            // QEMU reads the snapshot table when it opens the image.
            .map_err(|e| anyhow!("Could not open '{filename}': {e}"))?;
            info.snapshots = Some(
                snaps
                    .iter()
                    .map(|s| SnapshotInfo {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        vm_state_size: s.vm_state_size,
                        date_sec: s.date_sec.into(),
                        date_nsec: s.date_nsec,
                        vm_clock_sec: (s.vm_clock_nsec / 1_000_000_000) as i64,
                        vm_clock_nsec: (s.vm_clock_nsec % 1_000_000_000) as u32,
                        icount: s.icount,
                    })
                    .collect(),
            );
        }
    }
    if let Some(extra) = info.actual_size.as_mut() {
        let side: u64 = info
            .children
            .iter()
            .filter_map(|c| c.info.actual_size)
            .sum();
        *extra += side;
    }
    info.children.push(ChildInfo {
        name: "file".to_string(),
        // qemu reports the file length rounded up to a sector.
        info: ImageInfo::file_node(filename, file_len.div_ceil(512) * 512, file_actual),
    });
    Ok(info)
}

/// The `json:{...}` name QEMU gives an image opened with a key secret.
fn keyed_json_name(format: &str, filename: &str, secret_id: &str) -> String {
    use crate::report::qobject::{to_json_compact, QDict, QObject};
    let mut file = QDict::new();
    file.put("driver", "file");
    file.put("filename", filename);
    let mut node = QDict::new();
    node.put("driver", format);
    node.put("file", QObject::Dict(file));
    let key = if format == "luks" {
        "key-secret"
    } else {
        "encrypt.key-secret"
    };
    node.put(key, secret_id);
    format!("json:{}", to_json_compact(&QObject::Dict(node)))
}

/// Runs `img info`.
pub fn run(args: &InfoArgs) -> Result<i32> {
    let mut chain = Vec::new();
    let spec = super::image_spec::resolve(&args.filename, args.format.as_deref(), args.image_opts)?;
    let mut filename = spec.filename;
    let mut format = match &spec.format {
        Some(f) => Some(parse_format(f)?),
        None => None,
    };
    let mut seen = Vec::new();
    // Every image of the chain is read, with the command's -U.
    let how = super::locks::ImageUse::read(args.force_share);
    loop {
        let path = Path::new(&filename).to_path_buf();
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.contains(&canonical) {
            return Err(anyhow!(
                "Backing file '{filename}' creates an infinite loop."
            ));
        }
        seen.push(canonical);
        super::locks::lock_image_probed(&path, &filename, format, how)?;
        let mut info = match super::info_luks::describe(&filename, &path, format)? {
            Some(luks) => luks,
            None => {
                let image =
                    open_image_no_backing(&path, format).map_err(|e| open_error(&filename, e))?;
                super::locks::lock_side_files(&filename, &image, how)?;
                describe(&filename, &image)?
            }
        };
        if chain.is_empty() {
            if let Some(Some(id)) = spec.key_secrets.first() {
                // A key secret is one of QEMU's "strong" options: the node
                // is then named by its options as a json: name.
                info.filename = keyed_json_name(&info.format, &filename, id);
            }
        }
        let next = info.full_backing_filename.clone();
        let next_format = info.backing_filename_format.clone();
        chain.push(info);
        if !args.backing_chain {
            break;
        }
        match next {
            Some(n) => {
                filename = n;
                format = match next_format {
                    Some(f) => Some(parse_format(&f)?),
                    None => {
                        let path = Path::new(&filename);
                        let s = qcow::fs::open_storage(path, false)
                            .map_err(|e| open_error(&filename, e))?;
                        Some(probe(&*s, path).map_err(|e| open_error(&filename, e))?)
                    }
                };
            }
            None => break,
        }
    }
    let out = match (args.output, args.backing_chain) {
        (OutputFormat::Json, true) => render_chain_json(&chain),
        (OutputFormat::Json, false) => chain[0].render_json(),
        (OutputFormat::Human, true) => render_chain_human(&chain),
        (OutputFormat::Human, false) => chain[0].render_human(),
    };
    print!("{out}");
    if args.output == OutputFormat::Json && !out.ends_with('\n') {
        println!();
    }
    Ok(0)
}
