//! `img convert`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::device::BlockRead;
use qcow::fs::{open_image, open_image_unsafe_cache, AnyImage, Format};

use super::create::create_image_with;
use super::{io_reason, open, parse_format, prefixed};
use crate::cli::{CacheMode, ConvertArgs, SnapshotParam};
use crate::engine::convert::{run as run_convert, ConvertJob};
use crate::opts::{option_help, CreateOptions, ImageFormat, OptsError, ParsedOptions};

/// Default `-S`: zero runs of at least 4 KiB stay sparse.
const DEFAULT_SPARSE: u64 = 4096;
/// Worker threads when `-m` is not given.
const DEFAULT_WORKERS: usize = 4;

/// Opens the target with `-t` (default `unsafe`, as qemu-img: nothing
/// waits for the disk until the end of the process).
fn open_target(target: &str, format: Format, cache: Option<CacheMode>) -> Result<AnyImage> {
    let path = Path::new(target);
    let result = match cache.unwrap_or(CacheMode::Unsafe) {
        CacheMode::Unsafe => open_image_unsafe_cache(path, format),
        _ => open_image(path, Some(format), true),
    };
    result.map_err(|e| anyhow!("Could not open '{target}': {}", io_reason(&e)))
}

/// The snapshot `-l snapshot.name=NAME`, `-l snapshot.id=ID`, `-l NAME`
/// or `-s NAME` asks for, as an ID or name.
fn snapshot_to_read(args: &ConvertArgs) -> Option<String> {
    if let Some(p) = &args.snapshot {
        return Some(match p {
            SnapshotParam::IdOrName(n) => n.clone(),
            SnapshotParam::Spec { id, name } => {
                id.clone().or_else(|| name.clone()).unwrap_or_default()
            }
        });
    }
    args.snapshot_id_or_name.clone()
}

/// Runs `img convert`.
pub fn run(args: &ConvertArgs) -> Result<i32> {
    // qemu-img's order: the -o lists as it reads them, the option
    // conflicts, then `-o help`, then the file names.
    let list = args.option_list().map_err(|e| anyhow!("{e}"))?;
    if let Some(conflict) = args
        .copy_offload_conflict()
        .or_else(|| args.no_create_conflict())
    {
        return Err(anyhow!("{conflict}"));
    }
    if list.has_help() {
        let format: ImageFormat = args.target_format.parse().map_err(|e| anyhow!("{e}"))?;
        print!("{}", option_help(format, args.help_target()));
        return Ok(0);
    }
    if args.salvage {
        return Err(anyhow!("img convert --salvage is not supported yet"));
    }
    let snapshot = snapshot_to_read(args);
    let target = args
        .target()
        .ok_or_else(|| anyhow!("Expecting image file name"))?
        .to_string();
    let sources: Vec<AnyImage> = args
        .sources()
        .iter()
        .map(|s| open(s, args.source_format.as_deref(), false))
        .collect::<Result<_>>()?;
    if let Some(name) = &snapshot {
        if sources.len() != 1 {
            return Err(anyhow!("No support for concatenating multiple snapshot"));
        }
        match &sources[0] {
            AnyImage::Qcow2(q) => q
                .view_snapshot(name)
                .map_err(|e| anyhow!("Failed to load snapshot: {}", io_reason(&e)))?,
            AnyImage::Raw(_) | AnyImage::Foreign(..) => {
                return Err(anyhow!(
                    "Failed to load snapshot: {} images have no snapshots",
                    sources[0].format().name()
                ))
            }
        }
    }
    let total: u64 = sources.iter().map(|s| s.virtual_size()).sum();
    let target_format: ImageFormat = args.target_format.parse().map_err(|e| anyhow!("{e}"))?;
    let (target_image, target_is_zero, target_has_backing) = if args.no_create {
        let image = open_image(
            Path::new(&target),
            Some(parse_format(&args.target_format)?),
            true,
        )
        .map_err(|e| anyhow!("Could not open '{target}': {}", io_reason(&e)))?;
        if image.virtual_size() < total {
            return Err(anyhow!(
                "Target image size ({}) is smaller than the source size ({total})",
                image.virtual_size()
            ));
        }
        let has_backing = image.backing().is_some();
        (image, args.target_is_zero, has_backing)
    } else {
        let mut parsed =
            ParsedOptions::parse(target_format, &list).map_err(|e| prefixed(&target, e))?;
        parsed
            .set_default_size(total)
            .map_err(|e| prefixed(&target, e))?;
        parsed
            .set_backing(args.backing.as_deref(), args.backing_format.as_deref())
            .map_err(|e| prefixed(&target, e))?;
        let mut opts = CreateOptions::from_parsed(&parsed).map_err(|e| prefixed(&target, e))?;
        if sources.len() > 1 && opts.backing_file.is_some() {
            return Err(anyhow!(
                "Having a backing file for the target makes no sense when concatenating \
                 multiple input images"
            ));
        }
        if opts.backing_file.is_some() && opts.backing_fmt.is_none() {
            return Err(prefixed(
                &target,
                OptsError::BackingFormatMissing { detected: None },
            ));
        }
        opts.validate(target_format)
            .map_err(|e| prefixed(&target, e))?;
        // Never write plain data where encryption was asked for.
        let encrypt = parsed.get("encrypt.format").is_some()
            || parsed.get("encryption").and_then(|v| v.boolean) == Some(true);
        if encrypt || target_format == ImageFormat::Luks {
            return Err(anyhow!(
                "{target}: img convert cannot write encrypted images yet"
            ));
        }
        let size = opts.size.unwrap_or(total);
        if args.compress && target_format != ImageFormat::Qcow2 {
            return Err(anyhow!("Compression not supported for this file format"));
        }
        let unsafe_cache = matches!(args.target_cache, None | Some(CacheMode::Unsafe));
        create_image_with(&target, target_format, &opts, size, unsafe_cache)?;
        let format = Format::parse(target_format.name())?;
        let image = open_target(&target, format, args.target_cache)?;
        let has_backing = opts.backing_file.is_some();
        (image, !has_backing, has_backing)
    };
    let source_refs: Vec<&dyn BlockRead> = sources.iter().map(|s| s as &dyn BlockRead).collect();
    let bar = super::progress::Progress::new(args.progress && !args.quiet, 1.0);
    let progress = |bytes: u64, total: u64| bar.advance(bytes, total);
    let job = ConvertJob {
        sources: &source_refs,
        target: &target_image,
        target_is_zero,
        target_has_backing,
        sparse_size: args.sparse_size.unwrap_or(DEFAULT_SPARSE),
        compress: args.compress,
        workers: args
            .parallel
            .map(|m| m as usize)
            .unwrap_or(DEFAULT_WORKERS)
            .min(DEFAULT_WORKERS * 2),
        progress: &progress,
    };
    run_convert(&job)?;
    bar.set(100.0);
    bar.end();
    drop(target_image);
    Ok(0)
}
