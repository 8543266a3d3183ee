//! The creation options each image format accepts, as qemu declares them.
//!
//! Owns the option descriptors for qcow2 and raw (name, type, help text,
//! default) and the `-o help` listing.

use super::ImageFormat;

/// The value type of an option, as shown by `-o help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptType {
    /// Free text (`<str>`); enumerations are checked later.
    Str,
    /// `on`/`off` and synonyms (`<bool (on/off)>`).
    Bool,
    /// Unsigned integer in C syntax (`<num>`).
    Number,
    /// A size with optional suffix (`<size>`).
    Size,
}

impl OptType {
    /// The type as `-o help` spells it.
    pub fn help_name(self) -> &'static str {
        match self {
            Self::Str => "str",
            Self::Bool => "bool (on/off)",
            Self::Number => "num",
            Self::Size => "size",
        }
    }
}

/// One option a format accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDesc {
    /// Name as written in `-o`.
    pub name: &'static str,
    /// Value type.
    pub kind: OptType,
    /// Help text of `-o help`.
    pub help: &'static str,
    /// Default printed on the `Formatting` line when the option is unset.
    pub default: Option<&'static str>,
}

const fn desc(
    name: &'static str,
    kind: OptType,
    help: &'static str,
    default: Option<&'static str>,
) -> OptDesc {
    OptDesc {
        name,
        kind,
        help,
        default,
    }
}

const SIZE_HELP: &str = "Virtual disk size";
const CIPHER_ALG_HELP: &str = "Name of encryption cipher algorithm";
const CIPHER_MODE_HELP: &str = "Name of encryption cipher mode";
const IVGEN_ALG_HELP: &str = "Name of IV generator algorithm";
const IVGEN_HASH_ALG_HELP: &str = "Name of IV generator hash algorithm";
const HASH_ALG_HELP: &str = "Name of encryption hash algorithm";
const ITER_TIME_HELP: &str = "Time to spend in PBKDF in milliseconds";

/// qcow2's key slot options of `amend` (not creation options).
pub const QCOW2_AMEND_ONLY: &[OptDesc] = &[
    desc(
        "encrypt.state",
        OptType::Str,
        "Select new state of affected keyslots (active/inactive)",
        None,
    ),
    desc(
        "encrypt.keyslot",
        OptType::Number,
        "Select a single keyslot to modify explicitly",
        None,
    ),
    desc(
        "encrypt.old-secret",
        OptType::Str,
        "Select all keyslots that match this password",
        None,
    ),
    desc(
        "encrypt.new-secret",
        OptType::Str,
        "New secret to set in the matching keyslots. Empty string to erase",
        None,
    ),
    desc("encrypt.iter-time", OptType::Number, ITER_TIME_HELP, None),
];

/// The `luks` format's options, in qemu's declaration order.
pub const LUKS_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "key-secret",
        OptType::Str,
        "ID of the secret that provides the keyslot passphrase",
        None,
    ),
    desc("cipher-alg", OptType::Str, CIPHER_ALG_HELP, None),
    desc("cipher-mode", OptType::Str, CIPHER_MODE_HELP, None),
    desc("ivgen-alg", OptType::Str, IVGEN_ALG_HELP, None),
    desc("ivgen-hash-alg", OptType::Str, IVGEN_HASH_ALG_HELP, None),
    desc("hash-alg", OptType::Str, HASH_ALG_HELP, None),
    desc("iter-time", OptType::Number, ITER_TIME_HELP, None),
    desc(
        "detached-header",
        OptType::Bool,
        "Create a detached LUKS header",
        None,
    ),
];

/// qcow2's options, in qemu's declaration order (the order of the
/// `Formatting` line).
pub const QCOW2_OPTIONS: &[OptDesc] = &[
    desc(
        "encryption",
        OptType::Bool,
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        None,
    ),
    desc(
        "encrypt.format",
        OptType::Str,
        "Encrypt the image, format choices: 'aes', 'luks'",
        None,
    ),
    desc(
        "encrypt.key-secret",
        OptType::Str,
        "ID of secret providing qcow AES key or LUKS passphrase",
        None,
    ),
    desc("encrypt.cipher-alg", OptType::Str, CIPHER_ALG_HELP, None),
    desc("encrypt.cipher-mode", OptType::Str, CIPHER_MODE_HELP, None),
    desc("encrypt.ivgen-alg", OptType::Str, IVGEN_ALG_HELP, None),
    desc(
        "encrypt.ivgen-hash-alg",
        OptType::Str,
        IVGEN_HASH_ALG_HELP,
        None,
    ),
    desc("encrypt.hash-alg", OptType::Str, HASH_ALG_HELP, None),
    desc("encrypt.iter-time", OptType::Number, ITER_TIME_HELP, None),
    desc(
        "cluster_size",
        OptType::Size,
        "qcow2 cluster size",
        Some("65536"),
    ),
    desc(
        "extended_l2",
        OptType::Bool,
        "Extended L2 tables",
        Some("off"),
    ),
    desc(
        "preallocation",
        OptType::Str,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
        None,
    ),
    desc(
        "compression_type",
        OptType::Str,
        "Compression method used for image cluster compression",
        Some("zlib"),
    ),
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "compat",
        OptType::Str,
        "Compatibility level (v2 [0.10] or v3 [1.1])",
        None,
    ),
    desc(
        "backing_file",
        OptType::Str,
        "File name of a base image",
        None,
    ),
    desc(
        "backing_fmt",
        OptType::Str,
        "Image format of the base image",
        None,
    ),
    desc(
        "data_file",
        OptType::Str,
        "File name of an external data file",
        None,
    ),
    desc(
        "data_file_raw",
        OptType::Bool,
        "The external data file must stay valid as a raw image",
        None,
    ),
    desc(
        "lazy_refcounts",
        OptType::Bool,
        "Postpone refcount updates",
        Some("off"),
    ),
    desc(
        "refcount_bits",
        OptType::Number,
        "Width of a reference count entry in bits",
        Some("16"),
    ),
];

/// The `file` protocol's options beyond `preallocation` and `size` (in its
/// declaration order), offered under every format.
pub const FILE_PROTOCOL_OPTIONS: &[OptDesc] = &[
    desc(
        "nocow",
        OptType::Bool,
        "Turn off copy-on-write (valid only on btrfs)",
        None,
    ),
    desc(
        "extent_size_hint",
        OptType::Size,
        "Extent size hint for the image file, 0 to disable",
        None,
    ),
];

/// raw's own options.
pub const RAW_OPTIONS: &[OptDesc] = &[desc("size", OptType::Size, SIZE_HELP, None)];

/// Options the `file` protocol adds under a raw image (only shown by
/// `-o help` when a filename is given).
pub const RAW_PROTOCOL_OPTIONS: &[OptDesc] = &[desc(
    "preallocation",
    OptType::Str,
    "Preallocation mode (allowed values: off, falloc, full)",
    None,
)];

/// vpc's own options, in qemu's declaration order.
pub const VPC_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "subformat",
        OptType::Str,
        "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
        None,
    ),
    desc(
        "force_size",
        OptType::Bool,
        "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
        None,
    ),
];

/// vdi's own options, in qemu's declaration order.
pub const VDI_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "static",
        OptType::Bool,
        "VDI static (pre-allocated) image",
        Some("off"),
    ),
];

/// vmdk's own options, in qemu's declaration order.
pub const VMDK_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "adapter_type",
        OptType::Str,
        "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
        None,
    ),
    desc("backing_file", OptType::Str, "File name of a base image", None),
    desc("backing_fmt", OptType::Str, "Must be 'vmdk' if present", None),
    desc("compat6", OptType::Bool, "VMDK version 6 image", Some("off")),
    desc("hwversion", OptType::Str, "VMDK hardware version", Some("undefined")),
    desc("toolsversion", OptType::Str, "VMware guest tools version", None),
    desc(
        "subformat",
        OptType::Str,
        "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
        None,
    ),
    desc(
        "zeroed_grain",
        OptType::Bool,
        "Enable efficient zero writes using the zeroed-grain GTE feature",
        None,
    ),
];

/// qed's own options, in qemu's declaration order.
pub const QED_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, SIZE_HELP, None),
    desc(
        "backing_file",
        OptType::Str,
        "File name of a base image",
        None,
    ),
    desc(
        "backing_fmt",
        OptType::Str,
        "Image format of the base image",
        None,
    ),
    desc(
        "cluster_size",
        OptType::Size,
        "Cluster size (in bytes)",
        Some("65536"),
    ),
    desc(
        "table_size",
        OptType::Size,
        "L1/L2 table size (in clusters)",
        None,
    ),
];

/// vhdx's own options, in qemu's declaration order.
pub const VHDX_OPTIONS: &[OptDesc] = &[
    desc("size", OptType::Size, "Virtual disk size; max of 64TB.", None),
    desc("log_size", OptType::Size, "Log size; min 1MB.", Some("1048576")),
    desc(
        "block_size",
        OptType::Size,
        "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
        Some("0"),
    ),
    desc(
        "subformat",
        OptType::Str,
        "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
        None,
    ),
    desc(
        "block_state_zero",
        OptType::Bool,
        "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
        None,
    ),
];

/// The format's own options (what `-o help` lists without a filename).
fn format_options(format: ImageFormat) -> &'static [OptDesc] {
    match format {
        ImageFormat::Qcow2 => QCOW2_OPTIONS,
        ImageFormat::Raw => RAW_OPTIONS,
        ImageFormat::Vpc => VPC_OPTIONS,
        ImageFormat::Vdi => VDI_OPTIONS,
        ImageFormat::Vmdk => VMDK_OPTIONS,
        ImageFormat::Qed => QED_OPTIONS,
        ImageFormat::Vhdx => VHDX_OPTIONS,
        ImageFormat::Luks => LUKS_OPTIONS,
    }
}

/// Every option `format` accepts, in `Formatting`-line order.
pub fn options_for(format: ImageFormat) -> Vec<&'static OptDesc> {
    match format {
        ImageFormat::Qcow2 => QCOW2_OPTIONS.iter().chain(FILE_PROTOCOL_OPTIONS).collect(),
        other => format_options(other)
            .iter()
            .chain(RAW_PROTOCOL_OPTIONS)
            .chain(FILE_PROTOCOL_OPTIONS)
            .collect(),
    }
}

/// The text of `-o help` (or `-o ?`) for `format`.
///
/// Without a filename qemu-img lists only the format's options under
/// `Supported FMT options:` and adds a note about protocol options; with a
/// filename it lists format and protocol options under `Supported options:`.
pub fn option_help(format: ImageFormat, filename: Option<&str>) -> String {
    let mut descs: Vec<&OptDesc> = match (format, filename) {
        (format, None) => format_options(format).iter().collect(),
        _ => options_for(format),
    };
    descs.sort_by_key(|d| d.name);
    let mut out = match filename {
        None => format!("Supported {} options:\n", format.name()),
        Some(_) => "Supported options:\n".to_owned(),
    };
    for d in descs {
        let mut line = format!("  {}=<{}>", d.name, d.kind.help_name());
        while line.len() < 24 {
            line.push(' ');
        }
        line.push_str(" - ");
        line.push_str(d.help);
        out.push_str(&line);
        out.push('\n');
    }
    if filename.is_none() {
        out.push_str(
            "\nThe protocol level may support further options.\n\
             Specify the target filename to include those options.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qemu-img create -f qcow2 -o help` (qemu-img 10.0.2).
    const QCOW2_HELP: &str = "\
Supported qcow2 options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
  cluster_size=<size>    - qcow2 cluster size
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression
  data_file=<str>        - File name of an external data file
  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image
  encrypt.cipher-alg=<str> - Name of encryption cipher algorithm
  encrypt.cipher-mode=<str> - Name of encryption cipher mode
  encrypt.format=<str>   - Encrypt the image, format choices: 'aes', 'luks'
  encrypt.hash-alg=<str> - Name of encryption hash algorithm
  encrypt.iter-time=<num> - Time to spend in PBKDF in milliseconds
  encrypt.ivgen-alg=<str> - Name of IV generator algorithm
  encrypt.ivgen-hash-alg=<str> - Name of IV generator hash algorithm
  encrypt.key-secret=<str> - ID of secret providing qcow AES key or LUKS passphrase
  encryption=<bool (on/off)> - Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size

The protocol level may support further options.
Specify the target filename to include those options.
";

    /// `qemu-img create -f raw -o '?'`.
    const RAW_HELP: &str = "\
Supported raw options:
  size=<size>            - Virtual disk size

The protocol level may support further options.
Specify the target filename to include those options.
";

    /// `qemu-img create -f raw -o help x.raw`.
    const RAW_HELP_WITH_FILE: &str = "\
Supported options:
  extent_size_hint=<size> - Extent size hint for the image file, 0 to disable
  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only on btrfs)
  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)
  size=<size>            - Virtual disk size
";

    #[test]
    fn help_listing_matches_qemu_img() {
        assert_eq!(option_help(ImageFormat::Qcow2, None), QCOW2_HELP);
        assert_eq!(option_help(ImageFormat::Raw, None), RAW_HELP);
        assert_eq!(
            option_help(ImageFormat::Raw, Some("x.raw")),
            RAW_HELP_WITH_FILE
        );
        let with_file = option_help(ImageFormat::Qcow2, Some("x.qcow2"));
        assert!(with_file.starts_with("Supported options:\n  backing_file=<str>"));
        assert!(with_file.ends_with("  size=<size>            - Virtual disk size\n"));
    }
}
