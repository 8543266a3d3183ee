//! The subcommands: each takes its parsed arguments, does the work through
//! the qcow library and prints qemu-img's output. Each returns the process
//! exit code; errors become one `img: ...` line and exit code 1.

pub mod amend;
pub mod amend_luks;
pub mod bench;
pub mod bitmap;
pub mod block_status;
pub mod check;
pub mod check_foreign;
pub mod close_errors;
pub mod commit;
pub mod commit_mirror;
pub mod compare;
pub mod convert;
pub mod create;
pub mod create_foreign;
pub mod create_luks;
pub mod dd;
pub mod encryption;
pub mod file_attrs;
pub mod image_spec;
pub mod info;
pub mod info_foreign;
pub mod info_luks;
pub mod locks;
pub mod map;
pub mod measure;
pub mod null_co;
pub mod progress;
pub mod rebase;
pub mod resize;
pub mod snapshot;

use std::path::Path;

use std::sync::Arc;

use anyhow::{anyhow, Result};
use qcow::blkdebug::{Blkdebug, BlkdebugImage, BlkdebugStorage};
use qcow::fs::{open_listing_backing_on, open_storage, probe, AnyImage, Format};

use crate::opts;

/// Parses a `-f`/`-O`/`-F` format name.
pub fn parse_format(name: &str) -> Result<Format> {
    match name {
        "qcow2" => Ok(Format::Qcow2),
        "raw" => Ok(Format::Raw),
        "vpc" => Ok(Format::Vpc),
        "vdi" => Ok(Format::Vdi),
        "vmdk" => Ok(Format::Vmdk),
        "qed" => Ok(Format::Qed),
        "vhdx" => Ok(Format::Vhdx),
        "luks" => Ok(Format::Luks),
        "bochs" => Ok(Format::Bochs),
        other => Err(anyhow!("Unknown driver '{other}'")),
    }
}

/// The probe warning qemu-img prints when it guesses raw for an image
/// opened for writing.
pub fn raw_probe_warning(filename: &str) -> String {
    format!(
        "WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n\
         \x20        Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n\
         \x20        Specify the 'raw' format explicitly to remove the restrictions."
    )
}

/// Opens an image by name with an optional format, as qemu-img does
/// (probing when no format is given), with qemu-img's error wording.
pub fn open(filename: &str, format: Option<&str>, writable: bool) -> Result<AnyImage> {
    open_named(filename, format, writable, false)
}

/// [`open`] of an image named as qemu-img accepts it: `json:{...}`, a
/// `file:` name or, with `image_opts`, an option string (see
/// [`image_spec`]).
pub fn open_named(
    name: &str,
    format: Option<&str>,
    writable: bool,
    image_opts: bool,
) -> Result<AnyImage> {
    let how = if writable {
        locks::ImageUse::WRITE
    } else {
        locks::ImageUse::READ
    };
    open_named_for(name, format, how, image_opts)
}

/// [`open_named`] of an image used as `how`, which decides the locks
/// taken on it (see [`locks`]).
pub fn open_named_for(
    name: &str,
    format: Option<&str>,
    how: locks::ImageUse,
    image_opts: bool,
) -> Result<AnyImage> {
    let writable = how.writable;
    let spec = image_spec::resolve_layered(name, format, image_opts)?;
    if let Some(size) = spec.null_size {
        return null_co::open(size).map_err(|e| open_error(name, e));
    }
    let (filename, format) = (spec.filename.as_str(), spec.format.as_deref());
    // qemu-img names an option string or json: name whole in its errors.
    let shown = if image_opts || name.starts_with("json:") {
        name
    } else {
        filename
    };
    let path = Path::new(filename);
    let format = match format {
        Some(f) => Some(parse_format(f)?),
        None => None,
    };
    // A blkdebug layer under the format is the storage the format opens.
    let under = match &spec.blkdebug {
        Some(b) if !b.over_format => Some(Blkdebug::open(b.rules.clone())),
        _ => None,
    };
    let layered = |storage: Arc<dyn qcow::Storage>| -> Result<Arc<dyn qcow::Storage>> {
        let storage = windowed(&spec, storage).map_err(|e| open_error(shown, e))?;
        Ok(match &under {
            Some(layer) => Arc::new(BlkdebugStorage::new(storage, layer.clone())),
            None => storage,
        })
    };
    let probed = match format {
        Some(f) => f,
        None => {
            let storage = open_storage(path, false).map_err(|e| open_error(filename, e))?;
            let probed = probe(&*layered(storage)?, path).map_err(|e| open_error(filename, e))?;
            if writable && probed == Format::Raw {
                eprintln!("{}", raw_probe_warning(filename));
            }
            probed
        }
    };
    // Locked before the open, which may repair what it writes; the
    // image's storage holds its locks, which end when the image does.
    let held = locks::lock_opening(path, shown, probed, how)?;
    let keys = spec
        .key_secrets
        .iter()
        .map(|id| id.as_deref().map(opts::secret::lookup).transpose())
        .collect::<Result<Vec<_>>>()?;
    let storage = open_storage(path, writable).map_err(|e| open_error(shown, e))?;
    let storage = locks::LockedStorage::wrap(storage, held.clone());
    let (image, backing_files) =
        open_listing_backing_on(layered(storage)?, path, format, writable, keys)
            .map_err(|e| open_error(shown, e))?;
    held.open_done(shown, &backing_files, &image, how)?;
    if let AnyImage::Qcow2(q) = &image {
        // QEMU sets up the cipher at open: an image opened for I/O needs
        // its key then.
        if q.is_encrypted() && spec.key_secrets.first().cloned().flatten().is_none() {
            return Err(open_error(
                shown,
                qcow::Error::KeySecretRequired {
                    option: "encrypt.key-secret".into(),
                },
            ));
        }
    }
    match &spec.blkdebug {
        Some(b) if b.over_format => {
            let format = image.format();
            let layer = Blkdebug::open(b.rules.clone());
            Ok(AnyImage::Foreign(
                format,
                Box::new(BlkdebugImage::new(image, layer)),
            ))
        }
        _ => Ok(image),
    }
}

/// `storage` under the raw window (`offset`/`size`) `spec` names, if any.
pub fn windowed(
    spec: &image_spec::ImageSpec,
    storage: Arc<dyn qcow::Storage>,
) -> qcow::Result<Arc<dyn qcow::Storage>> {
    match spec.window {
        Some(w) => Ok(Arc::new(qcow::raw_window::RawWindow::new(storage, w)?)),
        None => Ok(storage),
    }
}

/// An error opening `filename` as qemu-img words it: `Could not open
/// 'X': reason`, except a probed format we cannot read, which names itself
/// in one line.
pub fn open_error(filename: &str, e: qcow::Error) -> anyhow::Error {
    match e {
        e @ qcow::Error::FormatNotReadable { .. } => anyhow!("{e}"),
        // The file itself would not open: QEMU names it twice (the image,
        // then its file node).
        qcow::Error::Io { context, source } if context.starts_with("Could not open") => {
            anyhow!(
                "Could not open '{filename}': {context}: {}",
                os_text(&source)
            )
        }
        e => anyhow!("Could not open '{filename}': {}", io_reason(&e)),
    }
}

/// The message of an error, with I/O errors reduced to their OS text.
///
/// A backing file that fails to open gets QEMU's prefix
/// (bdrv_open_backing_file's `Could not open backing file: `).
pub fn io_reason(e: &qcow::Error) -> String {
    match e {
        qcow::Error::Io { source, .. } => os_text(source),
        qcow::Error::Backing { reason, .. } => format!("Could not open backing file: {reason}"),
        // QEMU's EFBIG.
        qcow::Error::RefcountTableTooLarge { .. } => "File too large".to_string(),
        other => other.to_string(),
    }
}

/// [`io_reason`] of a read that failed on an open image, as qemu-img
/// reports it: corruption found on the way is first printed on a line of
/// its own, as QEMU's qcow2 driver prints it when it finds it (once per
/// process: QEMU suppresses further events), and data that will not
/// decompress is an I/O error (QEMU's EIO).
pub fn read_failure(e: &qcow::Error) -> String {
    report_corruption(e);
    match e {
        qcow::Error::BadCompressedCluster { .. } => "Input/output error".to_string(),
        e => io_reason(e),
    }
}

/// Whether a corruption event line was printed (QEMU prints one per image
/// and suppresses the rest).
static EVENT_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints QEMU's corruption event line of `e`, if it is one, the first
/// time only (QEMU suppresses further events).
pub fn report_corruption(e: &qcow::Error) {
    if let Some(line) = e.corruption_event_line() {
        if !EVENT_PRINTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("{line}");
        }
    }
}

/// Prints what operations on `image` that succeeded reported, as QEMU's
/// qcow2 driver prints it on the way: a non-fatal corruption event (once)
/// and failed refcount decrements. Called after the image is flushed,
/// when the decrements have been applied.
pub fn report_notices(image: &AnyImage) {
    let AnyImage::Qcow2(q) = image else {
        return;
    };
    for notice in q.take_notices() {
        let first_event = matches!(notice, qcow::image::Notice::Corruption { .. })
            && !EVENT_PRINTED.swap(true, std::sync::atomic::Ordering::SeqCst);
        if first_event || matches!(notice, qcow::image::Notice::FreeFailed { .. }) {
            eprintln!("{}", notice.line());
        }
    }
}

/// The error of an operation on an open image, as [`io_reason`] words it;
/// corruption found on the way is first reported on a line of its own, as
/// QEMU's qcow2 driver prints it when it finds it.
pub fn operation_failure(e: &qcow::Error) -> anyhow::Error {
    if let Some(line) = e.corruption_event_line() {
        eprintln!("{line}");
    }
    anyhow!("{}", io_reason(e))
}

/// An io::Error's text without Rust's "(os error N)" suffix: "No such file
/// or directory", as qemu-img words it.
pub fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// An option error as qemu-img prints it: most are prefixed with the
/// image's file name, a malformed `-o` list is not.
pub fn prefixed(filename: &str, e: crate::opts::OptsError) -> anyhow::Error {
    if e.has_filename_prefix() {
        anyhow!("{filename}: {e}")
    } else {
        anyhow!("{e}")
    }
}

/// Whether an image looks metadata-preallocated the way qemu's qcow2
/// driver decides it (many more clusters in the file than blocks actually
/// stored): only then does qemu look into the file for holes under data
/// clusters and report them as zero.
pub fn looks_preallocated(image: &AnyImage) -> bool {
    let AnyImage::Qcow2(q) = image else {
        return false;
    };
    let cs = q.cluster_size();
    let (Ok(len), Some(real)) = (q.file().len(), q.file().allocated_bytes()) else {
        return false;
    };
    let file_clusters = len.div_ceil(cs);
    let real_clusters = real / cs;
    file_clusters >= (real_clusters * 10 / 9).max(real_clusters + 2)
}

#[cfg(test)]
mod tests {
    use super::io_reason;

    #[test]
    fn a_backing_failure_reads_as_qemus() {
        let e = qcow::Error::Backing {
            name: "b.qcow2".into(),
            reason: "Could not open 'b.qcow2': No such file or directory".into(),
        };
        assert_eq!(
            io_reason(&e),
            "Could not open backing file: Could not open 'b.qcow2': No such file or directory"
        );
    }
}
