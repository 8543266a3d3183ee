//! Creating images of the formats of `qcow::formats` whose options need
//! more than a line of `create`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::formats::dir_files::DirFiles;
use qcow::formats::vmdk::create::{create, CreateOptions as VmdkOptions, Subformat};
use qcow::Storage;

use super::io_reason;
use crate::opts::CreateOptions;

/// Creates a vmdk image of `size` bytes at `filename` (already opened as
/// `storage`), its extent files next to it.
pub fn vmdk(filename: &str, storage: &dyn Storage, opts: &CreateOptions, size: u64) -> Result<()> {
    let hw_version = match (&opts.hwversion, opts.compat6) {
        (Some(v), _) => v.clone(),
        (None, Some(true)) => "6".to_string(),
        (None, _) => "4".to_string(),
    };
    let vmdk_opts = VmdkOptions {
        subformat: opts
            .subformat
            .as_deref()
            .and_then(Subformat::parse)
            .unwrap_or_default(),
        adapter_type: opts.adapter_type.clone().unwrap_or_else(|| "ide".into()),
        hw_version,
        tools_version: opts
            .toolsversion
            .clone()
            .unwrap_or_else(|| "2147483647".into()),
        zeroed_grain: opts.zeroed_grain.unwrap_or(false),
        parent: match &opts.backing_file {
            Some(name) => Some((vmdk_parent_cid(filename, name)?, name.clone())),
            None => None,
        },
    };
    let files = DirFiles::for_image(Path::new(filename));
    let cid = qcow::formats::vmdk::cid::new_cid();
    create(storage, size, &vmdk_opts, &files, cid)
        .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
}

/// The CID of the parent `name` names for a new vmdk at `filename`: the
/// parent must be a vmdk (QEMU probes it and refuses any other format),
/// (only sparse subformats take one: the options' check refuses the rest).
fn vmdk_parent_cid(filename: &str, name: &str) -> Result<u32> {
    let path = Path::new(filename);
    let dir = path.parent().unwrap_or(Path::new(""));
    let parent = qcow::fs::resolve(dir, name);
    let storage = qcow::fs::open_storage(&parent, false)
        .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))?;
    let format = qcow::fs::probe(&*storage, &parent)
        .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))?;
    if format != qcow::fs::Format::Vmdk {
        return Err(anyhow!("{filename}: backing_file must be a vmdk image"));
    }
    let files = DirFiles::for_image(&parent);
    let image = qcow::formats::vmdk::Vmdk::open(storage, false, &files)
        .map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))?;
    Ok(image.cid())
}

/// Creates a vhdx image of `size` bytes at `filename` (already opened as
/// `storage`).
pub fn vhdx(filename: &str, storage: &dyn Storage, opts: &CreateOptions, size: u64) -> Result<()> {
    use qcow::formats::vhdx::create::{create, CreateOptions as VhdxOptions, Subformat};
    let defaults = VhdxOptions::default();
    let vhdx_opts = VhdxOptions {
        subformat: opts
            .subformat
            .as_deref()
            .and_then(Subformat::parse)
            .unwrap_or_default(),
        block_size: opts.block_size.unwrap_or(defaults.block_size),
        log_size: opts.log_size.unwrap_or(defaults.log_size),
        block_state_zero: opts.block_state_zero.unwrap_or(defaults.block_state_zero),
    };
    let creator = concat!("img v", env!("CARGO_PKG_VERSION"));
    create(storage, size, &vhdx_opts, creator).map_err(|e| anyhow!("{filename}: {}", io_reason(&e)))
}
