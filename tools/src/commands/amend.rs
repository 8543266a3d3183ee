//! `img amend`: change format options of an existing qcow2 image (compat
//! level, lazy refcounts, refcount width, backing and data file names,
//! size), with qemu-img's option checks and messages. The library checks
//! every condition before it changes anything.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use qcow::fs::{open_storage, probe, FileOpener, Format};
use qcow::image::{amend_with_progress, read_header_cluster, AmendOptions};

use super::{open_error, parse_format};
use crate::cli::AmendArgs;
use crate::opts::list::split_options;
use crate::opts::table::options_for;
use crate::opts::{ImageFormat, OptionList, ParsedOptions};

/// Options `qemu-img amend` accepts for qcow2; any other creation option
/// is "only supported for image creation".
const AMENDABLE: &[&str] = &[
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "lazy_refcounts",
    "refcount_bits",
    "size",
];

/// The text of `img amend -o help`.
const AMEND_HELP: &str = "Amend options for 'qcow2':
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  data_file=<str>        - File name of an external data file
  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image
  encrypt.iter-time=<num> - Time to spend in PBKDF in milliseconds
  encrypt.keyslot=<num>  - Select a single keyslot to modify explicitly
  encrypt.new-secret=<str> - New secret to set in the matching keyslots. Empty string to erase
  encrypt.old-secret=<str> - Select all keyslots that match this password
  encrypt.state=<str>    - Select new state of affected keyslots (active/inactive)
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size";

/// The text of `img amend -f luks -o help`.
const LUKS_AMEND_HELP: &str = "Amend options for 'luks':
  iter-time=<num>        - Time to spend in PBKDF in milliseconds
  keyslot=<num>          - Select a single keyslot to modify explicitly
  new-secret=<str>       - New secret to set in the matching keyslots. Empty string to erase
  old-secret=<str>       - Select all keyslots that match this password
  state=<str>            - Select new state of affected keyslots (active/inactive)";

/// qemu-img's `print_amend_option_help`: the amend options of `format`, or
/// its refusal when the format has none (only qcow2 and luks have).
fn amend_help(format: &str) -> Result<&'static str> {
    match format {
        "qcow2" => Ok(AMEND_HELP),
        "luks" => Ok(LUKS_AMEND_HELP),
        other if qcow::probe::Format::from_name(other).is_some() => {
            bail!("Format driver '{other}' does not support option amendment")
        }
        other => bail!("Unknown file format '{other}'"),
    }
}

/// Turns the `-o` list into library options, refusing what qemu-img
/// refuses, in its order and words.
fn amend_options(list: &OptionList) -> Result<AmendOptions> {
    for pair in split_options(list.as_str()) {
        if !AMENDABLE.contains(&pair.key.as_str())
            && !super::amend_luks::AMEND_KEYS.contains(&pair.key.as_str())
        {
            // Known creation options get qemu's hint; the rest are unknown.
            let creation_only = options_for(ImageFormat::Qcow2)
                .iter()
                .any(|d| d.name == pair.key || pair.key.starts_with("encrypt."));
            if creation_only {
                bail!(
                    "Invalid parameter '{}'\nThis option is only supported for image creation",
                    pair.key
                );
            }
            bail!("Invalid parameter '{}'", pair.key);
        }
    }
    let parsed = parse_amend_list(list)?;
    let text = |key: &str| parsed.get(key).map(|v| v.raw.clone());
    let mut opts = AmendOptions::default();
    if let Some(compat) = text("compat") {
        opts.version = Some(match compat.as_str() {
            "0.10" | "v2" => 2,
            "1.1" | "v3" => 3,
            other => bail!("Unknown compatibility level {other}"),
        });
    }
    opts.lazy_refcounts = parsed.get("lazy_refcounts").and_then(|v| v.boolean);
    if let Some(bits) = parsed.get("refcount_bits").and_then(|v| v.number) {
        if bits == 0 || bits > 64 || !bits.is_power_of_two() {
            bail!("Refcount width must be a power of two and may not exceed 64 bits");
        }
        opts.refcount_order = Some(bits.trailing_zeros());
    }
    if parsed.get("data_file_raw").is_some() {
        bail!("data-file-raw cannot be set on existing images");
    }
    opts.size = parsed.get("size").and_then(|v| v.number);
    opts.backing_file = text("backing_file");
    opts.backing_fmt = text("backing_fmt");
    opts.data_file = text("data_file");
    Ok(opts)
}

/// The `-o` list parsed: creation options by the qcow2 table, the key
/// slot options by their own types.
fn parse_amend_list(list: &OptionList) -> Result<ParsedOptions> {
    let mut plain = Vec::new();
    let mut parsed = ParsedOptions::empty(ImageFormat::Qcow2);
    for pair in split_options(list.as_str()) {
        if super::amend_luks::AMEND_KEYS.contains(&pair.key.as_str()) {
            parsed
                .set_amend_key(&pair.key, &pair.value)
                .map_err(|e| anyhow!("{e}"))?;
        } else {
            plain.push(format!("{}={}", pair.key, pair.value.replace(',', ",,")));
        }
    }
    for pair in split_options(&plain.join(",")) {
        parsed
            .set(&pair.key, &pair.value)
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(parsed)
}

/// Runs `img amend`.
pub fn run(args: &AmendArgs) -> Result<i32> {
    if args.options.is_empty() {
        bail!(
            "Must specify options (-o)\nTry '{} amend --help' for more info",
            crate::program()
        );
    }
    let list = OptionList::from_args(&args.options).map_err(|e| anyhow!("{e}"))?;
    // With -f, help needs no image; without, the probed format's is shown.
    if let (Some(format), true) = (&args.format, list.has_help()) {
        println!("{}", amend_help(format)?);
        return Ok(0);
    }
    let filename = args
        .filename
        .as_deref()
        .ok_or_else(|| anyhow!("Expecting one image file name"))?;
    let spec = super::image_spec::resolve(filename, args.format.as_deref(), args.image_opts)?;
    let path = Path::new(&spec.filename);
    let storage = open_storage(path, true).map_err(|e| open_error(filename, e))?;
    let format = match &spec.format {
        Some(f) => parse_format(f)?,
        None => probe(&*storage, path).map_err(|e| open_error(filename, e))?,
    };
    if list.has_help() {
        println!("{}", amend_help(format.name())?);
        return Ok(0);
    }
    super::locks::lock_image(path, filename, format, super::locks::ImageUse::WRITE)?;
    if format == Format::Raw {
        bail!("Format driver 'raw' does not support option amendment");
    }
    let opts = amend_options(&list)?;
    let encrypted = read_header_cluster(&*storage)
        .map(|hc| hc.header.crypt_method)
        .unwrap_or(0);
    if encrypted != 0 {
        // QEMU opens an encrypted image's cipher, so needs its key.
        super::open_named(filename, args.format.as_deref(), false, args.image_opts)?;
    }
    let slot_keys: Vec<&str> = split_options(list.as_str())
        .iter()
        .filter(|p| super::amend_luks::AMEND_KEYS.contains(&p.key.as_str()))
        .map(|_| "")
        .collect();
    if !slot_keys.is_empty() {
        if encrypted == 0 {
            bail!("Can't amend encryption options - encryption not present");
        }
        if encrypted != qcow::crypto::CRYPT_LUKS {
            bail!("Only LUKS encryption options can be amended");
        }
        let change = super::amend_luks::SlotChange::from_parsed(&parse_amend_list(&list)?)?;
        let secret = spec
            .key_secrets
            .first()
            .cloned()
            .flatten()
            .map(|id| crate::opts::secret::lookup(&id))
            .transpose()?;
        let image = qcow::image::Qcow2::open(storage.clone(), true, &FileOpener::for_image(path))
            .map_err(|e| open_error(filename, e))?;
        super::amend_luks::apply(&image, &change, secret.as_deref(), args.force)?;
        image.close()?;
        if opts == AmendOptions::default() {
            return Ok(0);
        }
    }
    // qemu-img's amend progress: 0 first, the driver's figures, 100 last,
    // whether or not the amendment succeeded.
    let progress = super::progress::Progress::new(args.progress && !args.quiet, 1.0);
    progress.set(0.0);
    let result = amend_with_progress(storage, &FileOpener::for_image(path), &opts, &mut |o, t| {
        progress.set(100.0 * o as f32 / t as f32)
    });
    progress.set(100.0);
    progress.end();
    result.map_err(|e| match &e {
        // Only the downgrade walks snapshot L1 tables: QEMU's
        // qcow2_expand_zero_clusters reports the table's fault, then
        // qcow2_downgrade fails with its errno.
        qcow::Error::SnapshotL1Refused { .. } => {
            eprintln!("{}: {e}", crate::program());
            anyhow!(
                "Failed to turn zero into data clusters: {}",
                super::snapshot::errno_text(&e)
            )
        }
        _ => super::operation_failure(&e),
    })?;
    Ok(0)
}
