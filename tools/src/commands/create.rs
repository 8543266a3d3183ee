//! `img create`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use qcow::create::{
    create_encrypted, CreateOptions as QcowOptions, NewEncryption, Preallocation as QPre,
};
use qcow::device::{BlockRead, SECTOR_SIZE};
use qcow::fs::{resolve, FileOpener};
use qcow::image::Opener;
use qcow::{FileStorage, Storage};

use super::{io_reason, os_text, prefixed};
use crate::cli::CreateArgs;
use crate::opts::{
    option_help, Compat, CompressionType, CreateOptions, ImageFormat, OptsError, ParsedOptions,
    Preallocation,
};

/// Converts the tool's preallocation mode to the library's.
pub fn prealloc(p: Preallocation) -> QPre {
    match p {
        Preallocation::Off => QPre::Off,
        Preallocation::Metadata => QPre::Metadata,
        Preallocation::Falloc => QPre::Falloc,
        Preallocation::Full => QPre::Full,
    }
}

/// Library options from validated tool options.
pub fn qcow_options(opts: &CreateOptions, size: u64) -> QcowOptions {
    QcowOptions {
        size,
        version: match opts.compat_or_default() {
            Compat::V0_10 => 2,
            Compat::V1_1 => 3,
        },
        cluster_size: opts.cluster_size_or_default(),
        refcount_bits: opts.refcount_bits_or_default() as u32,
        lazy_refcounts: opts.lazy_refcounts.unwrap_or(false),
        extended_l2: opts.extended_l2.unwrap_or(false),
        compression_type: match opts.compression_type_or_default() {
            CompressionType::Zlib => qcow::header::CompressionType::Zlib,
            CompressionType::Zstd => qcow::header::CompressionType::Zstd,
        },
        preallocation: prealloc(opts.preallocation_or_default()),
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_fmt.clone(),
        data_file: opts.data_file.clone(),
        data_file_raw: opts.data_file_raw.unwrap_or(false),
    }
}

/// Creates (truncates) a file for a new image.
pub fn create_file(path: &Path) -> Result<Arc<dyn Storage>> {
    create_file_with(path, false)
}

/// Creates (truncates) a file; with `unsafe_cache` its flushes do not wait
/// for the disk (qemu's cache=unsafe).
pub fn create_file_with(path: &Path, unsafe_cache: bool) -> Result<Arc<dyn Storage>> {
    create_file_with_attrs(path, unsafe_cache, None)
}

/// [`create_file_with`] for an image file: the `file` protocol's `nocow`
/// and `extent_size_hint` options of `opts` go on the new file first.
fn create_file_with_attrs(
    path: &Path,
    unsafe_cache: bool,
    opts: Option<&CreateOptions>,
) -> Result<Arc<dyn Storage>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| anyhow!("Could not create '{}': {}", path.display(), os_text(&e)))?;
    if let Some(opts) = opts {
        let nocow = opts.nocow.unwrap_or(false);
        if let Some(warning) = super::file_attrs::apply(&file, nocow, opts.extent_size_hint) {
            eprintln!("{}: warning: {warning}", crate::program());
        }
    }
    Ok(Arc::new(if unsafe_cache {
        FileStorage::unsafe_cache(file)
    } else {
        FileStorage::new(file)
    }))
}

/// The most QEMU's file driver writes at the start of a new raw file
/// (its `MAX_BLOCKSIZE`).
const FIRST_BLOCK_MAX: u64 = 4096;

/// Creates an image of `format` at `filename` with validated options.
pub fn create_image(
    filename: &str,
    format: ImageFormat,
    opts: &CreateOptions,
    size: u64,
) -> Result<()> {
    create_image_with(filename, format, opts, size, false)
}

/// [`create_image`], optionally with qemu's cache=unsafe (for convert).
pub fn create_image_with(
    filename: &str,
    format: ImageFormat,
    opts: &CreateOptions,
    size: u64,
    unsafe_cache: bool,
) -> Result<()> {
    create_image_encrypted(filename, format, opts, size, unsafe_cache, None)
}

/// [`create_image_with`] of an image that may be encrypted (qcow2 with
/// `encrypt.format`, or the luks format).
pub fn create_image_encrypted(
    filename: &str,
    format: ImageFormat,
    opts: &CreateOptions,
    size: u64,
    unsafe_cache: bool,
    encryption: Option<&NewEncryption>,
) -> Result<()> {
    let path = Path::new(filename);
    // Held while the image is made.
    let _create_lock = super::locks::lock_for_create(path, filename)?;
    match format {
        ImageFormat::Luks => {
            let Some(NewEncryption::Luks { options, password }) = encryption else {
                return Err(anyhow!(
                    "{filename}: Parameter 'key-secret' is required for cipher"
                ));
            };
            let storage = create_file_with_attrs(path, unsafe_cache, Some(opts))?;
            super::create_luks::create(&*storage, options, password, size)
                .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
        }
        ImageFormat::Raw => {
            let storage = create_file_with_attrs(path, unsafe_cache, Some(opts))?;
            // QEMU makes raw images of whole 512-byte sectors.
            let size = size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
            storage.set_len(size)?;
            let mode = opts.preallocation_or_default();
            if size > 0 && matches!(mode, Preallocation::Off | Preallocation::Falloc) {
                // QEMU's file driver writes the first block of a new file
                // (512 bytes, or 4 KiB from 4 KiB on) so that probing the
                // alignment later reads real data; map shows it as data.
                let first = if size < FIRST_BLOCK_MAX {
                    512
                } else {
                    FIRST_BLOCK_MAX
                };
                storage.write_at(&[0u8; FIRST_BLOCK_MAX as usize][..first as usize], 0)?;
            }
            match mode {
                Preallocation::Falloc => storage.allocate(0, size)?,
                Preallocation::Full => {
                    let zeros = vec![0u8; 1 << 20];
                    let mut pos = 0;
                    while pos < size {
                        let n = (size - pos).min(zeros.len() as u64);
                        storage.write_at(&zeros[..n as usize], pos)?;
                        pos += n;
                    }
                }
                _ => {}
            }
            storage.flush()?;
            Ok(())
        }
        ImageFormat::Qcow2 => {
            let qopts = qcow_options(opts, size);
            // Like qemu-img, the data file name is taken relative to the
            // working directory.
            let data_file = match &qopts.data_file {
                Some(name) => Some(create_file_with(Path::new(name), unsafe_cache)?),
                None => None,
            };
            let storage = create_file_with_attrs(path, unsafe_cache, Some(opts))?;
            let image = create_encrypted(storage, data_file, None, &qopts, encryption)
                .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))?;
            image.close()?;
            Ok(())
        }
        ImageFormat::Vpc => {
            let storage = create_file_with(path, unsafe_cache)?;
            let vpc_opts = qcow::formats::vpc::CreateOptions {
                subformat: opts
                    .subformat
                    .as_deref()
                    .and_then(qcow::formats::vpc::Subformat::parse)
                    .unwrap_or_default(),
                force_size: opts.force_size.unwrap_or(false),
            };
            qcow::formats::vpc::create(&*storage, size, vpc_opts)
                .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
        }
        ImageFormat::Qed => {
            let storage = create_file_with(path, unsafe_cache)?;
            qcow::formats::qed::create(
                &*storage,
                size.div_ceil(512) * 512,
                opts.cluster_size.unwrap_or(65536) as u32,
                opts.table_size.unwrap_or(4) as u32,
                opts.backing_file
                    .as_deref()
                    .map(|name| qcow::formats::qed::NewBacking {
                        name,
                        raw: opts.backing_fmt.as_deref() == Some("raw"),
                    }),
            )
            .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
        }
        ImageFormat::Vmdk => {
            let storage = create_file_with(path, unsafe_cache)?;
            super::create_foreign::vmdk(filename, &*storage, opts, size)
        }
        ImageFormat::Vhdx => {
            let storage = create_file_with(path, unsafe_cache)?;
            super::create_foreign::vhdx(filename, &*storage, opts, size)
        }
        ImageFormat::Vdi => {
            let storage = create_file_with(path, unsafe_cache)?;
            qcow::formats::vdi::create(&*storage, size, opts.static_image.unwrap_or(false))
                .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
        }
    }
}

/// Opens the backing file named for a new image, as the image will; the
/// error is qemu-img's, with its hint line.
fn open_backing(
    filename: &str,
    image_path: &str,
    backing: &str,
    format: Option<&str>,
) -> Result<Box<dyn BlockRead>> {
    FileOpener::for_image(Path::new(image_path))
        .open_backing(backing, format)
        .map_err(|e| {
            let reason = match e {
                qcow::Error::Backing { reason, .. } => reason,
                e => io_reason(&e),
            };
            anyhow!("{filename}: {reason}\nCould not open backing image.")
        })
}

/// Runs `img create`.
pub fn run(args: &CreateArgs) -> Result<i32> {
    let format: Result<ImageFormat, _> = args.format.parse();
    let list = args.option_list().map_err(|e| anyhow!("{e}"))?;
    if list.has_help() {
        let format = format.map_err(|e| anyhow!("{e}"))?;
        print!("{}", option_help(format, args.filename.as_deref()));
        return Ok(0);
    }
    let filename = args
        .filename
        .as_deref()
        .ok_or_else(|| anyhow!("Expecting image file name"))?;
    // qemu-img names the file before a format it cannot create.
    let format = format.map_err(|e| anyhow!("{filename}: {e}"))?;
    // The file to write: `file:NAME` names NAME (see image_spec).
    let image_path = super::image_spec::resolve(filename, None, false)?.filename;
    let mut parsed = ParsedOptions::parse(format, &list).map_err(|e| prefixed(filename, e))?;
    if let Some(size) = args.size {
        parsed
            .set_size_argument(size)
            .map_err(|e| prefixed(filename, e))?;
    }
    parsed
        .set_backing(args.backing.as_deref(), args.backing_format.as_deref())
        .map_err(|e| prefixed(filename, e))?;
    let mut opts = match CreateOptions::from_parsed(&parsed) {
        Ok(opts) => opts,
        Err(e) => {
            // An unknown compat, preallocation or compression_type value is
            // the format driver's to refuse: qemu-img has printed its
            // Formatting line by then (when nothing before it failed).
            let driver_stage = parsed.get("backing_file").is_none() && parsed.get("size").is_some();
            if driver_stage && !args.quiet {
                println!("{}", parsed.formatting_line(filename));
            }
            return Err(prefixed(filename, e));
        }
    };
    if let Some(backing) = opts.backing_file.clone() {
        let dir = Path::new(&image_path).parent().unwrap_or(Path::new(""));
        let backing_path = resolve(dir, &backing);
        if same_file(Path::new(&image_path), &backing_path) {
            return Err(anyhow!("{filename}: {}", OptsError::BackingSameAsImage));
        }
        if backing.is_empty() {
            return Err(anyhow!(
                "{filename}: Expected backing file name, got empty string"
            ));
        }
        // qemu-img opens the backing file (unless -u) before it asks for
        // its format, and names the format it found.
        let opened = match args.backing_unsafe {
            true => None,
            false => Some(open_backing(
                filename,
                &image_path,
                &backing,
                opts.backing_fmt.as_deref(),
            )?),
        };
        if opts.backing_fmt.is_none() {
            let detected = opened.as_ref().map(|b| b.format_name().to_string());
            return Err(prefixed(
                filename,
                OptsError::BackingFormatMissing { detected },
            ));
        }
        if let Some(b) = opened {
            if opts.size.is_none() {
                parsed
                    .set_default_size(b.virtual_size())
                    .map_err(|e| prefixed(filename, e))?;
                opts.size = Some(b.virtual_size());
            }
        }
    }
    if !args.quiet {
        println!("{}", parsed.formatting_line(filename));
    }
    if let Err(e) = opts.validate(format) {
        // QEMU's vpc, vdi, qed and vhdx drivers check their own options
        // once the protocol layer has created (truncated) the file: a
        // refused image leaves an empty file, as qemu-img's does.
        let hint_ok = opts
            .extent_size_hint
            .is_none_or(|h| h <= u64::from(u32::MAX));
        let driver_checks_after_file = matches!(
            format,
            ImageFormat::Vpc | ImageFormat::Vdi | ImageFormat::Qed | ImageFormat::Vhdx
        );
        if hint_ok && driver_checks_after_file {
            create_file_with(Path::new(&image_path), false)?;
        }
        return Err(prefixed(filename, e));
    }
    let size = opts.require_size().map_err(|e| prefixed(filename, e))?;
    let encryption = match format {
        ImageFormat::Qcow2 => super::encryption::qcow2_encryption(&parsed),
        ImageFormat::Luks => super::encryption::luks_options(&parsed, "")
            .map(|(options, password)| Some(NewEncryption::Luks { options, password })),
        _ => Ok(None),
    }
    .map_err(|e| anyhow!("{filename}: {e:#}"))?;
    create_image_encrypted(&image_path, format, &opts, size, false, encryption.as_ref())?;
    Ok(0)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
