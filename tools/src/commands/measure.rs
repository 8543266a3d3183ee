//! `img measure`.

use anyhow::{anyhow, Result};
use qcow::device::{chain_extents, BlockRead, ExtentKind, FileIndex};
use qcow::fs::AnyImage;
use qcow::measure::{fits_l1_limit, fully_allocated_size};
use qcow::Storage;

use crate::cli::values::SnapshotParam;
use crate::cli::MeasureArgs;
use crate::opts::{CreateOptions, ImageFormat, OptionList, ParsedOptions, Preallocation};
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
                        file: FileIndex::IMAGE,
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

/// The input image named on the command line, refused in qemu-img's
/// words and order when the arguments do not name exactly one way to
/// size the new image.
fn input_filename(args: &MeasureArgs) -> Result<Option<&str>> {
    let filename = match args.files.as_slice() {
        [] => None,
        [one] => Some(one.as_str()),
        _ => return Err(anyhow!("At most one filename argument is allowed.")),
    };
    if filename.is_none() && (args.image_opts || args.format.is_some() || args.snapshot.is_some()) {
        return Err(anyhow!(
            "--image-opts, -f, and -l require a filename argument."
        ));
    }
    match (filename, args.size) {
        (Some(_), Some(_)) => Err(anyhow!("--size N cannot be used together with a filename.")),
        (None, None) => Err(anyhow!(
            "Either --size N or one filename must be specified."
        )),
        _ => Ok(filename),
    }
}

/// Runs `img measure`.
pub fn run(args: &MeasureArgs) -> Result<i32> {
    // qemu-img reads the -o lists while it parses the command line.
    let list = OptionList::from_args(args.options.iter()).map_err(|e| anyhow!("{e}"))?;
    let source = match input_filename(args)? {
        Some(f) => {
            let image = super::open_named_for(
                f,
                args.format.as_deref(),
                super::locks::ImageUse::read(args.force_share),
                args.image_opts,
            )?;
            let snapshot = args.snapshot.as_ref().map(|p| match p {
                SnapshotParam::IdOrName(n) => n.clone(),
                SnapshotParam::Spec { id, name } => {
                    id.clone().or_else(|| name.clone()).unwrap_or_default()
                }
            });
            if let (Some(name), AnyImage::Qcow2(q)) = (&snapshot, &image) {
                q.view_snapshot(name).map_err(|e| {
                    anyhow!(
                        "Failed to load snapshot: {}",
                        super::snapshot::load_failure(&e)
                    )
                })?;
            }
            Some(image)
        }
        None => None,
    };
    let target: ImageFormat = args.target_format.parse().map_err(|e| anyhow!("{e}"))?;
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
            // qcow2_measure validates the cluster size against extended L2
            // entries before anything else.
            if ext && cs < qcow::create::MIN_EXTENDED_L2_CLUSTER_SIZE {
                return Err(anyhow!("{}", qcow::create::EXTENDED_L2_CLUSTER_SIZE_REASON));
            }
            let aligned = virtual_size.div_ceil(cs) * cs;
            let luks = match parsed.get("encrypt.format") {
                Some(f) if f.raw == "luks" => {
                    super::encryption::luks_header_len(&parsed, "encrypt.")?.div_ceil(cs) * cs
                }
                _ => 0,
            };
            // qcow2_measure checks the size given (--size or -o size=,
            // not the input's) against the L1 limit first.
            let given_size = args.size.or(opts.size).unwrap_or(0);
            if !fits_l1_limit(given_size, cs, ext) {
                return Err(anyhow!(
                    "The image size is too large (try using a larger cluster size)"
                ));
            }
            let fully = luks + fully_allocated_size(virtual_size, cs, order, ext);
            // Preallocated data counts whole; so does an input's when the
            // new image has a backing file, as qemu-img cannot know what
            // that file shares with the input.
            let preallocated = matches!(
                opts.preallocation,
                Some(Preallocation::Full | Preallocation::Falloc)
            );
            let data = match &source {
                _ if preallocated => aligned,
                Some(_) if opts.backing_file.is_some() => aligned,
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

#[cfg(test)]
mod tests {
    use super::input_filename;
    use crate::cli::{parse_args, Command, MeasureArgs};

    fn measure(args: &[&str]) -> MeasureArgs {
        let mut full = vec!["img", "measure"];
        full.extend_from_slice(args);
        match parse_args(full).map(|c| c.command) {
            Ok(Command::Measure(a)) => a,
            Ok(_) => panic!("not measure"),
            Err(e) => panic!("{args:?}: {}", e.message),
        }
    }

    fn refusal(args: &[&str]) -> String {
        input_filename(&measure(args))
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn arguments_are_refused_in_qemu_img_words_and_order() {
        assert_eq!(
            refusal(&[]),
            "Either --size N or one filename must be specified."
        );
        assert_eq!(
            refusal(&["--size", "2G", "x"]),
            "--size N cannot be used together with a filename."
        );
        assert_eq!(
            refusal(&["--size", "2G", "x", "y"]),
            "At most one filename argument is allowed."
        );
        for flag in [&["--image-opts"][..], &["-f", "qcow2"], &["-l", "snap1"]] {
            assert_eq!(
                refusal(flag),
                "--image-opts, -f, and -l require a filename argument."
            );
        }
        assert_eq!(input_filename(&measure(&["x"])).unwrap(), Some("x"));
        assert_eq!(input_filename(&measure(&["--size", "0"])).unwrap(), None);
    }

    #[test]
    fn bad_values_are_refused_while_parsing() {
        let message = |args: &[&str]| {
            let mut full = vec!["img", "measure"];
            full.extend_from_slice(args);
            parse_args(full).expect_err("should be refused").message
        };
        for (args, expected) in [
            (
                &["--output", "foo"][..],
                ": --output must be used with human or json as argument.\n",
            ),
            (
                &["--size", "-1"],
                ": Invalid image size specified. Must be between 0 and 9223372036854775807.\n",
            ),
            (
                &["-l", "snapshot.foo=bar"],
                ": Invalid parameter 'snapshot.foo'\n",
            ),
        ] {
            let text = message(args);
            assert!(text.contains(expected), "{args:?}: {text}");
            assert!(!text.contains("Try "), "{args:?}: {text}");
        }
    }
}
