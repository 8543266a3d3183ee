//! The consistency rules qemu's qcow2 driver applies to creation options,
//! in the order `qcow2_co_create` checks them, with its messages.

use super::{Compat, CompressionType, CreateOptions, OptsError, Preallocation};

/// Cluster size used when none is given.
pub const DEFAULT_CLUSTER_SIZE: u64 = 65536;
/// Smallest cluster size: 512 bytes.
pub const MIN_CLUSTER_SIZE: u64 = 512;
/// Largest cluster size: 2 MiB.
pub const MAX_CLUSTER_SIZE: u64 = 2 * 1024 * 1024;
/// Smallest cluster size with extended L2 entries (32 subclusters of 512).
pub const MIN_EXTL2_CLUSTER_SIZE: u64 = 32 * MIN_CLUSTER_SIZE;

/// Checks qcow2 options; on success `options.preallocation` is resolved
/// (`data_file_raw=on` implies metadata preallocation).
pub(super) fn qcow2(options: &mut CreateOptions) -> Result<(), OptsError> {
    // Checked by the generic layer before the driver sees the options.
    if options.backing_file.as_deref() == Some("") {
        return Err(OptsError::EmptyBackingFile);
    }
    let v3 = options.compat_or_default() == Compat::V1_1;
    let extended_l2 = options.extended_l2.unwrap_or(false);
    if extended_l2 && !v3 {
        return Err(OptsError::Invalid(
            "Extended L2 entries are only supported with compatibility level 1.1 \
             and above (use version=v3 or greater)",
        ));
    }

    let cluster_size = options.cluster_size_or_default();
    if !cluster_size.is_power_of_two()
        || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
    {
        return Err(OptsError::Invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cluster_size < MIN_EXTL2_CLUSTER_SIZE {
        return Err(OptsError::Invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }

    let has_backing = options.backing_file.is_some();
    let preallocation = options.preallocation_or_default();
    if has_backing && preallocation != Preallocation::Off && !extended_l2 {
        return Err(OptsError::Invalid(
            "Backing file and preallocation can only be used at the same time if \
             extended_l2 is on",
        ));
    }
    if options.backing_fmt.is_some() && !has_backing {
        return Err(OptsError::Invalid(
            "Backing format cannot be used without backing file",
        ));
    }

    if options.lazy_refcounts.unwrap_or(false) && !v3 {
        return Err(OptsError::Invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above \
             (use version=v3 or greater)",
        ));
    }

    let refcount_bits = options.refcount_bits_or_default();
    if refcount_bits > 64 || !refcount_bits.is_power_of_two() {
        return Err(OptsError::Invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if !v3 && refcount_bits != 16 {
        return Err(OptsError::Invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 \
             or above (use version=v3 or greater)",
        ));
    }

    let data_file_raw = options.data_file_raw.unwrap_or(false);
    if data_file_raw && options.data_file.is_none() {
        return Err(OptsError::Invalid("data-file-raw requires data-file"));
    }
    if data_file_raw && has_backing {
        return Err(OptsError::Invalid(
            "Backing file and data-file-raw cannot be used at the same time",
        ));
    }
    if data_file_raw && preallocation == Preallocation::Off {
        options.preallocation = Some(Preallocation::Metadata);
    }
    if options.data_file.is_some() && !v3 {
        return Err(OptsError::Invalid(
            "External data files are only supported with compatibility level 1.1 \
             and above (use version=v3 or greater)",
        ));
    }

    if options.compression_type_or_default() != CompressionType::Zlib && !v3 {
        return Err(OptsError::Invalid(
            "Non-zlib compression type is only supported with compatibility level 1.1 \
             and above (use version=v3 or greater)",
        ));
    }
    Ok(())
}

/// Largest vpc disk: 2040 GiB (QEMU's `VHD_MAX_SECTORS`).
const VPC_MAX_SIZE: u64 = 0xff00_0000 * 512;
/// Largest vdi disk QEMU 10 creates.
const VDI_MAX_SIZE: u64 = 0x1_ffff_f800_0000;

/// Checks vpc options: the subformat name and the size limit.
pub(super) fn vpc(options: &mut CreateOptions) -> Result<(), OptsError> {
    if let Some(value) = &options.subformat {
        if qcow::formats::vpc::Subformat::parse(value).is_none() {
            return Err(OptsError::EnumValue {
                parameter: "subformat".to_owned(),
                value: value.clone(),
            });
        }
    }
    if options.size.unwrap_or(0) > VPC_MAX_SIZE {
        return Err(OptsError::Invalid(
            "The image size is too large for file format 'vpc'",
        ));
    }
    Ok(())
}

/// Checks vdi options: the size limit.
pub(super) fn vdi(options: &mut CreateOptions) -> Result<(), OptsError> {
    let size = options.size.unwrap_or(0);
    if size > VDI_MAX_SIZE {
        return Err(OptsError::VdiTooLarge(size));
    }
    Ok(())
}

/// Checks vhdx options in the order QEMU's vhdx driver checks them (after
/// it rounds the log and block sizes up to whole MiB).
pub(super) fn vhdx(options: &mut CreateOptions) -> Result<(), OptsError> {
    const MIB: u64 = 1 << 20;
    if let Some(value) = &options.subformat {
        if qcow::formats::vhdx::create::Subformat::parse(value).is_none() {
            return Err(OptsError::EnumValue {
                parameter: "subformat".to_owned(),
                value: value.clone(),
            });
        }
    }
    if options.size.unwrap_or(0).div_ceil(512) * 512 > qcow::formats::vhdx::create::MAX_SIZE {
        return Err(OptsError::Invalid("Image size too large; max of 64TB"));
    }
    let log_size = options.log_size.unwrap_or(MIB).div_ceil(MIB) * MIB;
    if log_size > u64::from(u32::MAX) {
        return Err(OptsError::Invalid("Log size must be smaller than 4 GB"));
    }
    if log_size < MIB {
        return Err(OptsError::Invalid("Log size must be a multiple of 1 MB"));
    }
    let block_size = options.block_size.unwrap_or(0).div_ceil(MIB) * MIB;
    if block_size != 0
        && !block_size
            .min(qcow::formats::vhdx::create::MAX_BLOCK_SIZE)
            .is_power_of_two()
    {
        return Err(OptsError::Invalid("Block size must be a power of two"));
    }
    Ok(())
}

/// Checks vmdk options in the order QEMU's vmdk driver checks them.
pub(super) fn vmdk(options: &mut CreateOptions) -> Result<(), OptsError> {
    if options.compat6 == Some(true) && options.hwversion.is_some() {
        return Err(OptsError::Invalid(
            "compat6 cannot be enabled with hwversion set",
        ));
    }
    if let Some(adapter) = &options.adapter_type {
        if !matches!(
            adapter.as_str(),
            "ide" | "buslogic" | "lsilogic" | "legacyESX"
        ) {
            return Err(OptsError::InvalidParameterValue(adapter.clone()));
        }
    }
    if let Some(subformat) = &options.subformat {
        if qcow::formats::vmdk::create::Subformat::parse(subformat).is_none() {
            return Err(OptsError::InvalidParameterValue(subformat.clone()));
        }
    }
    let flat = matches!(
        options.subformat.as_deref(),
        Some("monolithicFlat" | "twoGbMaxExtentFlat")
    );
    if flat && options.backing_file.is_some() {
        return Err(OptsError::Invalid("Flat image can't have backing file"));
    }
    Ok(())
}

/// Checks qed options with QEMU's messages.
pub(super) fn qed(options: &mut CreateOptions) -> Result<(), OptsError> {
    let cluster_size = options.cluster_size.unwrap_or(65536);
    if !cluster_size.is_power_of_two() || !(4096..=64 << 20).contains(&cluster_size) {
        return Err(OptsError::Invalid(
            "QED cluster size must be within range [4096, 67108864] and power of 2",
        ));
    }
    let table_size = options.table_size.unwrap_or(4);
    if !table_size.is_power_of_two() || table_size > 16 {
        return Err(OptsError::Invalid(
            "QED table size must be within range [1, 16] and power of 2",
        ));
    }
    let entries = table_size * cluster_size / 8;
    let max = entries.saturating_mul(entries).saturating_mul(cluster_size);
    if options.size.unwrap_or(0).div_ceil(512) * 512 > max {
        return Err(OptsError::QedImageSize(max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::opts::{CreateOptions, ImageFormat, ParsedOptions, Preallocation};

    fn check(list: &str) -> Result<CreateOptions, String> {
        let parsed =
            ParsedOptions::parse_str(ImageFormat::Qcow2, list).map_err(|e| e.to_string())?;
        let mut opts = CreateOptions::from_parsed(&parsed).map_err(|e| e.to_string())?;
        opts.validate(ImageFormat::Qcow2)
            .map_err(|e| e.to_string())?;
        Ok(opts)
    }

    /// Messages captured from `qemu-img create -f qcow2 -o LIST x 1M`
    /// (qemu-img 10.0.2); `-b base.qcow2` is written as `backing_file=`.
    #[test]
    fn messages_match_qemu_img() {
        let cases = [
            (
                "cluster_size=3000",
                "Cluster size must be a power of two between 512 and 2048k",
            ),
            (
                "cluster_size=256",
                "Cluster size must be a power of two between 512 and 2048k",
            ),
            (
                "cluster_size=4M",
                "Cluster size must be a power of two between 512 and 2048k",
            ),
            (
                "cluster_size=0",
                "Cluster size must be a power of two between 512 and 2048k",
            ),
            (
                "refcount_bits=3",
                "Refcount width must be a power of two and may not exceed 64 bits",
            ),
            (
                "refcount_bits=128",
                "Refcount width must be a power of two and may not exceed 64 bits",
            ),
            (
                "refcount_bits=0",
                "Refcount width must be a power of two and may not exceed 64 bits",
            ),
            (
                "refcount_bits=-1",
                "Refcount width must be a power of two and may not exceed 64 bits",
            ),
            (
                "compat=0.10,lazy_refcounts=on",
                "Lazy refcounts only supported with compatibility level 1.1 and above \
                 (use version=v3 or greater)",
            ),
            (
                "compat=0.10,refcount_bits=8",
                "Different refcount widths than 16 bits require compatibility level 1.1 \
                 or above (use version=v3 or greater)",
            ),
            (
                "compat=0.10,data_file=d",
                "External data files are only supported with compatibility level 1.1 \
                 and above (use version=v3 or greater)",
            ),
            ("data_file_raw=on", "data-file-raw requires data-file"),
            (
                "compat=0.10,compression_type=zstd",
                "Non-zlib compression type is only supported with compatibility level 1.1 \
                 and above (use version=v3 or greater)",
            ),
            (
                "compat=0.10,extended_l2=on",
                "Extended L2 entries are only supported with compatibility level 1.1 \
                 and above (use version=v3 or greater)",
            ),
            (
                "backing_fmt=qcow2",
                "Backing format cannot be used without backing file",
            ),
            (
                "backing_file=base.qcow2,backing_fmt=qcow2,preallocation=metadata",
                "Backing file and preallocation can only be used at the same time if \
                 extended_l2 is on",
            ),
            (
                "backing_file=base.qcow2,backing_fmt=qcow2,data_file=d,data_file_raw=on",
                "Backing file and data-file-raw cannot be used at the same time",
            ),
            (
                "extended_l2=on,cluster_size=8k",
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ),
            (
                "backing_file=",
                "Expected backing file name, got empty string",
            ),
        ];
        for (list, message) in cases {
            assert_eq!(check(list).unwrap_err(), message, "list {list}");
        }
    }

    #[test]
    fn accepted_combinations() {
        assert!(check("cluster_size=2M").is_ok());
        assert!(check("cluster_size=512").is_ok());
        assert!(check("refcount_bits=010").is_ok());
        assert!(check("extended_l2=on,cluster_size=16k").is_ok());
        assert!(check("data_file=d,preallocation=full").is_ok());
        assert!(check("compat=v2").is_ok());
        let opts = check("data_file=d,data_file_raw=on").unwrap();
        assert_eq!(opts.preallocation, Some(Preallocation::Metadata));
        let opts = check("data_file=d,data_file_raw=on,preallocation=falloc").unwrap();
        assert_eq!(opts.preallocation, Some(Preallocation::Falloc));
    }
}
