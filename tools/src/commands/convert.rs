//! `img convert`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::create::NewEncryption;
use qcow::device::BlockRead;
use qcow::fs::{open_image, open_image_keyed, open_image_unsafe_cache, AnyImage, Format};

use super::create::create_image_encrypted;
use super::locks::{lock_opening, HeldLocks, ImageUse};
use super::{io_reason, open_named_for, parse_format, prefixed};
use crate::cli::{CacheMode, ConvertArgs, SnapshotParam};
use crate::engine::convert::{run as run_convert, ConvertJob};
use crate::opts::{option_help, CreateOptions, ImageFormat, OptsError, ParsedOptions};

/// Default `-S`: zero runs of at least 4 KiB stay sparse.
const DEFAULT_SPARSE: u64 = 4096;
/// Worker threads when `-m` is not given.
const DEFAULT_WORKERS: usize = 4;
/// qemu-img convert reads its sources sharing only reads
/// (`BDRV_O_NO_SHARE`): no one may write them meanwhile, unless `-U`
/// shares everything on them.
fn source_use(force_share: bool) -> ImageUse {
    ImageUse {
        no_share: true,
        force_share,
        ..ImageUse::READ
    }
}

/// Opens the target with `-t` (default `unsafe`, as qemu-img: nothing
/// waits for the disk until the end of the process), locked as qemu-img
/// locks it (its backing files too, read); the locks live as long as the
/// [`HeldLocks`] returned, which the caller keeps beside the image.
fn open_target(
    target: &str,
    format: Format,
    cache: Option<CacheMode>,
) -> Result<(AnyImage, HeldLocks)> {
    let path = Path::new(target);
    let held = lock_opening(path, target, format, ImageUse::WRITE)?;
    let result = match cache.unwrap_or(CacheMode::Unsafe) {
        CacheMode::Unsafe => open_image_unsafe_cache(path, format),
        _ => open_image(path, Some(format), true),
    };
    let image = result.map_err(|e| anyhow!("Could not open '{target}': {}", io_reason(&e)))?;
    held.open_done(
        target,
        &target_backing_files(target, &image),
        &image,
        ImageUse::WRITE,
    )?;
    Ok((image, held))
}

/// The backing chain of the target (`-B`), which qemu-img opens with the
/// target and so locks: read, never with `-U` (that is the sources'). A
/// chain that does not open is left to the copy.
fn target_backing_files(target: &str, image: &AnyImage) -> Vec<std::path::PathBuf> {
    use qcow::image::Opener;
    let AnyImage::Qcow2(q) = image else {
        return Vec::new();
    };
    let hc = q.header_cluster();
    let Some(name) = &hc.backing_file else {
        return Vec::new();
    };
    let opener = qcow::fs::FileOpener::for_image(Path::new(target));
    match opener.open_backing(name, hc.backing_format()) {
        Ok(_) => opener.opened_backing_files(),
        Err(_) => Vec::new(),
    }
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

/// The encryption `-o` asks of a new target (qcow2's `encrypt.*`, the
/// luks format's options), its key secret looked up.
fn target_encryption(parsed: &ParsedOptions, format: ImageFormat) -> Result<Option<NewEncryption>> {
    match format {
        ImageFormat::Qcow2 => super::encryption::qcow2_encryption(parsed),
        ImageFormat::Luks => super::encryption::luks_options(parsed, "")
            .map(|(options, password)| Some(NewEncryption::Luks { options, password })),
        _ => Ok(None),
    }
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
    if args.salvage && args.compress {
        return Err(anyhow!(
            "img convert --salvage does not write compressed targets (-c) yet"
        ));
    }
    let snapshot = snapshot_to_read(args);
    let target = args
        .target()
        .ok_or_else(|| anyhow!("Expecting image file name"))?
        .to_string();
    let sources: Vec<AnyImage> = args
        .sources()
        .iter()
        .map(|s| {
            open_named_for(
                s,
                args.source_format.as_deref(),
                source_use(args.force_share),
                false,
            )
        })
        .collect::<Result<_>>()?;
    if let Some(name) = &snapshot {
        if sources.len() != 1 {
            return Err(anyhow!("No support for concatenating multiple snapshot"));
        }
        match &sources[0] {
            AnyImage::Qcow2(q) => q.view_snapshot(name).map_err(|e| {
                anyhow!(
                    "Failed to load snapshot: {}",
                    super::snapshot::load_failure(&e)
                )
            })?,
            AnyImage::Raw(_) | AnyImage::Foreign(..) => {
                return Err(anyhow!(
                    "Failed to load snapshot: {} images have no snapshots",
                    sources[0].format().name()
                ))
            }
        }
    }
    let total: u64 = sources.iter().map(|s| s.virtual_size()).sum();
    // The target's locks (and the sources', held by their images) last
    // as long as this command, not the process: `vm` runs convert in its
    // own process and then has a VMM open what it made.
    let mut target_locks: Vec<HeldLocks> = Vec::new();
    let target_format: ImageFormat = args.target_format.parse().map_err(|e| anyhow!("{e}"))?;
    let (target_image, target_is_zero, target_has_backing) = if args.no_create {
        let target_format = parse_format(&args.target_format)?;
        target_locks.push(lock_opening(
            Path::new(&target),
            &target,
            target_format,
            ImageUse::WRITE,
        )?);
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
        // Like qemu-img, only -B makes the target's backing file count:
        // without it, what the sources leave unallocated is zeroed in the
        // target even when the target has a backing file of its own.
        (image, args.target_is_zero, args.backing.is_some())
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
        let encrypt = parsed.get("encrypt.format").is_some()
            || parsed.get("encryption").and_then(|v| v.boolean) == Some(true);
        if args.compress && (encrypt || target_format == ImageFormat::Luks) {
            return Err(anyhow!(
                "Compression and encryption not supported at the same time"
            ));
        }
        let encryption = target_encryption(&parsed, target_format)
            .map_err(|e| anyhow!("{target}: error while converting {target_format}: {e:#}"))?;
        // qemu-img opens the new target with the options it was created
        // with: an encrypted one with its key secret.
        let target_key = match &encryption {
            Some(NewEncryption::Luks { password, .. }) => Some(password.clone()),
            Some(NewEncryption::Aes) => {
                let id = parsed.get("encrypt.key-secret").map(|v| v.raw.clone());
                Some(super::encryption::key_secret(id, "encrypt.")?)
            }
            None => None,
        };
        let size = opts.size.unwrap_or(total);
        if args.compress && target_format != ImageFormat::Qcow2 {
            return Err(anyhow!("Compression not supported for this file format"));
        }
        let unsafe_cache = matches!(args.target_cache, None | Some(CacheMode::Unsafe));
        target_locks.push(super::locks::lock_for_create(
            Path::new(&target),
            &format!("{target}: error while converting {}", args.target_format),
        )?);
        create_image_encrypted(
            &target,
            target_format,
            &opts,
            size,
            unsafe_cache,
            encryption.as_ref(),
        )?;
        let format = Format::parse(target_format.name())?;
        let image = match &target_key {
            // A LUKS volume opens only with its key.
            Some(key) if format == Format::Luks => {
                target_locks.push(lock_opening(
                    Path::new(&target),
                    &target,
                    format,
                    ImageUse::WRITE,
                )?);
                open_image_keyed(
                    Path::new(&target),
                    Some(format),
                    true,
                    vec![Some(key.clone())],
                )
                .map_err(|e| anyhow!("Could not open '{target}': {}", io_reason(&e)))?
            }
            _ => {
                let (image, held) = open_target(&target, format, args.target_cache)?;
                target_locks.push(held);
                image
            }
        };
        if let (Some(key), AnyImage::Qcow2(q)) = (&target_key, &image) {
            q.unlock(key)
                .map_err(|e| anyhow!("Could not open '{target}': {}", io_reason(&e)))?;
        }
        let has_backing = opts.backing_file.is_some();
        // A new LUKS payload is a hole, which decrypts to noise: like
        // qemu-img (the crypto driver has no zero init), zeros are written.
        let reads_zero = !has_backing && format != Format::Luks;
        (image, reads_zero, has_backing)
    };
    let source_refs: Vec<&dyn BlockRead> = sources.iter().map(|s| s as &dyn BlockRead).collect();
    let bar = super::progress::Progress::new(args.progress && !args.quiet, 1.0);
    let progress = |bytes: u64, total: u64| bar.advance(bytes, total);
    let source_files: Vec<Option<&dyn qcow::storage::Storage>> = sources
        .iter()
        .map(|s| s.host_file().map(|f| &**f as &dyn qcow::storage::Storage))
        .collect();
    let job = ConvertJob {
        sources: &source_refs,
        source_files: &source_files,
        target: &target_image,
        target_is_zero,
        target_has_backing,
        sparse_size: args.sparse_size.unwrap_or(DEFAULT_SPARSE),
        compress: args.compress,
        // qemu-img offloads only with -C; -S 0 reads no zeros either, so
        // its data goes the same way.
        copy_offload: args.copy_range || args.sparse_size == Some(0),
        in_order: !args.oob_writes,
        workers: args
            .parallel
            .map(|m| m as usize)
            .unwrap_or(DEFAULT_WORKERS)
            .min(DEFAULT_WORKERS * 2),
        progress: &progress,
    };
    if args.salvage {
        crate::engine::salvage::run(&job, args.quiet)?;
    } else {
        run_convert(&job)?;
    }
    bar.set(100.0);
    bar.end();
    drop(target_image);
    drop(target_locks);
    Ok(0)
}
