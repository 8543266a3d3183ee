//! `img info` of a `luks` volume: qemu-img reads only the header for it
//! (the key is not needed to describe a volume), so the section comes from
//! the header alone, as QEMU's `QCryptoBlockInfoLUKS`.

use std::path::Path;

use anyhow::Result;
use qcow::fs::{open_storage, probe, Format};

use super::open_error;
use crate::report::encrypt::luks_info;
use crate::report::info::{ChildInfo, FormatSpecific, ImageInfo};

/// Describes `path` from its LUKS header when it is a luks volume (given
/// as `format` or probed); `None` for other formats.
pub fn describe(filename: &str, path: &Path, format: Option<Format>) -> Result<Option<ImageInfo>> {
    let storage = open_storage(path, false).map_err(|e| open_error(filename, e))?;
    let format = match format {
        Some(f) => f,
        None => probe(&*storage, path).map_err(|e| open_error(filename, e))?,
    };
    if format != Format::Luks {
        return Ok(None);
    }
    let header =
        qcow::crypto::volume::read_header(&*storage).map_err(|e| open_error(filename, e))?;
    let file_len = storage.len().map_err(|e| open_error(filename, e))?;
    let payload = u64::from(header.payload_offset_sector) * 512;
    let file_actual = storage.allocated_bytes();
    let mut info = ImageInfo {
        filename: filename.to_string(),
        format: "luks".to_string(),
        virtual_size: file_len.saturating_sub(payload),
        actual_size: file_actual,
        encrypted: Some(true),
        dirty_flag: Some(false),
        format_specific: Some(FormatSpecific::Other {
            type_name: "luks",
            data: luks_info(&header, false),
        }),
        ..ImageInfo::default()
    };
    info.children.push(ChildInfo {
        name: "file".to_string(),
        info: ImageInfo::file_node(filename, file_len.div_ceil(512) * 512, file_actual),
    });
    Ok(Some(info))
}
