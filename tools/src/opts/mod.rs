//! Image creation options (`-o key=value,...`) as qemu-img parses them.
//!
//! Owns the typed result, [`CreateOptions`], and its error type with
//! qemu-img's wording. Parsing happens in the same stages as in qemu, so
//! errors come out in the same order:
//! 1. [`list`]: the `-o` arguments are accumulated and split into pairs;
//! 2. [`parsed`]: names are checked against the format's option table
//!    ([`table`]) and boolean/number/size values are parsed
//!    ([`ParsedOptions`]); `SIZE`, `-b` and `-F` are applied; the
//!    `Formatting ...` line is printed from this stage;
//! 3. [`CreateOptions::from_parsed`] converts enumerations and
//!    [`CreateOptions::validate`] applies the format's consistency rules.
//!
//! Errors other than [`OptsError::InvalidOptionList`] are printed by
//! qemu-img prefixed with the image filename: `img: FILE: MESSAGE`.
//!
//! The flow of `img create`:
//! ```
//! use tools::opts::{option_help, CreateOptions, ImageFormat, OptionList, ParsedOptions};
//!
//! let list = OptionList::from_args(["cluster_size=4k"]).unwrap();
//! let format: ImageFormat = "qcow2".parse().unwrap();
//! if list.has_help() {
//!     print!("{}", option_help(format, Some("x.qcow2")));
//! }
//! let mut parsed = ParsedOptions::parse(format, &list).unwrap();
//! parsed.set_size_argument(1 << 30).unwrap();
//! parsed.set_backing(None, None).unwrap();
//! assert_eq!(
//!     parsed.formatting_line("x.qcow2"),
//!     "Formatting 'x.qcow2', fmt=qcow2 cluster_size=4096 extended_l2=off \
//!      compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16"
//! );
//! let mut options = CreateOptions::from_parsed(&parsed).unwrap();
//! options.validate(format).unwrap();
//! assert_eq!(options.cluster_size_or_default(), 4096);
//! ```

pub mod list;
pub mod parsed;
pub mod secret;
pub mod table;
mod validate;

use std::fmt;
use std::str::FromStr;

pub use list::{OptPair, OptionList};
pub use parsed::ParsedOptions;
pub use table::option_help;
pub use validate::{
    DEFAULT_CLUSTER_SIZE, MAX_CLUSTER_SIZE, MIN_CLUSTER_SIZE, MIN_EXTL2_CLUSTER_SIZE,
};

/// An option list or value rejected, with qemu-img's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptsError {
    /// A `-o` argument that is empty, starts with `,` or ends in a lone `,`.
    #[error("Invalid option list: {0}")]
    InvalidOptionList(String),
    /// A name the format does not accept.
    #[error("Invalid parameter '{0}'")]
    InvalidParameter(String),
    /// A boolean option with a value other than on/off/yes/no/...
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    BoolExpected(String),
    /// A number option that is not a number.
    #[error("Parameter '{0}' expects a number")]
    NumberExpected(String),
    /// A number option beyond 64 bits.
    #[error("Value '{value}' is too large for parameter '{name}'")]
    NumberTooLarge {
        /// Option name.
        name: String,
        /// The text as given.
        value: String,
    },
    /// A size option that does not parse.
    #[error(transparent)]
    Size(#[from] crate::size::OptionSizeError),
    /// An enumeration value not in the list (`Parameter 'version' does not
    /// accept value '0.11'`); `parameter` is qemu's QAPI name.
    #[error("Parameter '{parameter}' does not accept value '{value}'")]
    EnumValue {
        /// QAPI name: `version`, `compression-type` or `preallocation`.
        parameter: String,
        /// The text as given.
        value: String,
    },
    /// `-o size=` and a `SIZE` argument both given.
    #[error("The image size must be specified only once")]
    SizeSpecifiedTwice,
    /// No size anywhere (and no backing file to take it from).
    #[error("Image creation needs a size parameter")]
    SizeRequired,
    /// `-b` for a format without backing files.
    #[error("Backing file not supported for file format '{0}'")]
    BackingNotSupported(String),
    /// `-F` for a format without backing files.
    #[error("Backing file format not supported for file format '{0}'")]
    BackingFmtNotSupported(String),
    /// `backing_file=` with an empty name.
    #[error("Expected backing file name, got empty string")]
    EmptyBackingFile,
    /// The backing file is the image being created.
    #[error("Error: Trying to create an image with the same filename as the backing file")]
    BackingSameAsImage,
    /// A backing file without `-F`/`backing_fmt` (qemu-img refuses, then
    /// names the format it probed, if any, on a second line).
    #[error(
        "Backing file specified without backing format{}",
        .detected.as_ref().map(|f| format!("\nDetected format of {f}.")).unwrap_or_default()
    )]
    BackingFormatMissing {
        /// Format probed from the backing file.
        detected: Option<String>,
    },
    /// A consistency rule of the format was broken; the message is qemu's.
    #[error("{0}")]
    Invalid(&'static str),
    /// raw: a preallocation mode qemu knows but raw files do not support.
    #[error("Unsupported preallocation mode: {0}")]
    UnsupportedPreallocation(Preallocation),
    /// vdi: a size over the format's limit.
    #[error("Unsupported VDI image size (size is {0:#x}, max supported is 0x1fffff8000000)")]
    VdiTooLarge(u64),
    /// qed: a size the tables cannot map.
    #[error("QED image size must be a non-zero multiple of cluster size and less than {0} bytes")]
    QedImageSize(u64),
    /// raw: a preallocation mode qemu does not know.
    #[error("invalid parameter value: {0}")]
    InvalidParameterValue(String),
}

impl OptsError {
    /// True when qemu-img prefixes this message with the image filename
    /// (`img: FILE: MESSAGE`); only a malformed `-o` argument is reported
    /// without it.
    pub fn has_filename_prefix(&self) -> bool {
        !matches!(self, Self::InvalidOptionList(_))
    }
}

/// An image format we can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// Plain raw file.
    Raw,
    /// VHD (`vpc`), dynamic or fixed.
    Vpc,
    /// VirtualBox VDI, dynamic or static.
    Vdi,
    /// VMware VMDK, every subformat qemu-img creates.
    Vmdk,
    /// QED.
    Qed,
    /// Hyper-V VHDX, dynamic or fixed.
    Vhdx,
    /// LUKS1 (a LUKS header, then the encrypted payload).
    Luks,
}

impl ImageFormat {
    /// The format's name as qemu spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
            Self::Vpc => "vpc",
            Self::Vdi => "vdi",
            Self::Vmdk => "vmdk",
            Self::Qed => "qed",
            Self::Vhdx => "vhdx",
            Self::Luks => "luks",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `-f`/`-O` format img cannot create: `Unknown file format 'foo'` for
/// a name qemu-img does not know either, qemu-img's `Format driver 'bochs'
/// does not support image creation` for the read-only formats (bochs,
/// cloop, dmg), and a plain statement for the formats qemu-img creates and
/// img does not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl std::error::Error for UnknownFormat {}

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use qcow::probe::Format as Known;
        let name = &self.0;
        match Known::from_name(name) {
            None => write!(f, "Unknown file format '{name}'"),
            Some(Known::Bochs | Known::Cloop | Known::Dmg) => {
                write!(f, "Format driver '{name}' does not support image creation")
            }
            Some(_) => write!(f, "img cannot create {name} images yet"),
        }
    }
}

impl FromStr for ImageFormat {
    type Err = UnknownFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "qcow2" => Ok(Self::Qcow2),
            "raw" => Ok(Self::Raw),
            "vpc" => Ok(Self::Vpc),
            "vdi" => Ok(Self::Vdi),
            "vmdk" => Ok(Self::Vmdk),
            "qed" => Ok(Self::Qed),
            "vhdx" => Ok(Self::Vhdx),
            "luks" => Ok(Self::Luks),
            _ => Err(UnknownFormat(name.to_owned())),
        }
    }
}

/// qcow2 compatibility level (`compat=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compat {
    /// Version 2, `compat=0.10` or `compat=v2`.
    V0_10,
    /// Version 3, `compat=1.1` or `compat=v3` (the default).
    V1_1,
}

impl Compat {
    /// Parses `0.10`, `v2`, `1.1` or `v3`.
    pub fn parse(value: &str) -> Result<Self, OptsError> {
        match value {
            "0.10" | "v2" => Ok(Self::V0_10),
            "1.1" | "v3" => Ok(Self::V1_1),
            _ => Err(enum_error("version", value)),
        }
    }

    /// The qcow2 header version (2 or 3).
    pub fn version(self) -> u32 {
        match self {
            Self::V0_10 => 2,
            Self::V1_1 => 3,
        }
    }

    /// How `qemu-img info` shows it: `0.10` or `1.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_10 => "0.10",
            Self::V1_1 => "1.1",
        }
    }
}

/// qcow2 compression algorithm (`compression_type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompressionType {
    /// Deflate, the default.
    #[default]
    Zlib,
    /// Zstandard (needs compat 1.1).
    Zstd,
}

impl CompressionType {
    /// Parses `zlib` or `zstd`.
    pub fn parse(value: &str) -> Result<Self, OptsError> {
        match value {
            "zlib" => Ok(Self::Zlib),
            "zstd" => Ok(Self::Zstd),
            _ => Err(enum_error("compression-type", value)),
        }
    }

    /// The name qemu uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

/// Preallocation mode (`preallocation=`, `resize --preallocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preallocation {
    /// Nothing preallocated (default).
    #[default]
    Off,
    /// qcow2 metadata only.
    Metadata,
    /// `fallocate` the space.
    Falloc,
    /// Write zeroes over the whole space.
    Full,
}

impl Preallocation {
    /// Parses `off`, `metadata`, `falloc` or `full`.
    pub fn parse(value: &str) -> Result<Self, OptsError> {
        match value {
            "off" => Ok(Self::Off),
            "metadata" => Ok(Self::Metadata),
            "falloc" => Ok(Self::Falloc),
            "full" => Ok(Self::Full),
            _ => Err(enum_error("preallocation", value)),
        }
    }

    /// The name qemu uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Metadata => "metadata",
            Self::Falloc => "falloc",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for Preallocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn enum_error(parameter: &str, value: &str) -> OptsError {
    OptsError::EnumValue {
        parameter: parameter.to_owned(),
        value: value.to_owned(),
    }
}

/// Creation options, typed. `None` means "not given"; the defaults qemu
/// applies are documented on each field and applied by the accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (`size=` or the `SIZE` argument).
    pub size: Option<u64>,
    /// qcow2: compatibility level; default 1.1.
    pub compat: Option<Compat>,
    /// Backing file name (`backing_file=` or `-b`).
    pub backing_file: Option<String>,
    /// Backing file format (`backing_fmt=` or `-F`).
    pub backing_fmt: Option<String>,
    /// qcow2: external data file name.
    pub data_file: Option<String>,
    /// qcow2: the data file is a valid raw image by itself.
    pub data_file_raw: Option<bool>,
    /// qcow2: cluster size in bytes; default 65536.
    pub cluster_size: Option<u64>,
    /// qcow2: extended L2 entries (subclusters); default off.
    pub extended_l2: Option<bool>,
    /// Preallocation; default off (metadata for qcow2 with
    /// `data_file_raw=on`).
    pub preallocation: Option<Preallocation>,
    /// qcow2: lazy refcounts; default off.
    pub lazy_refcounts: Option<bool>,
    /// qcow2: refcount width in bits; default 16.
    pub refcount_bits: Option<u64>,
    /// qcow2: compression type; default zlib.
    pub compression_type: Option<CompressionType>,
    /// vpc: `dynamic` (default) or `fixed`, as given (checked by
    /// [`CreateOptions::validate`]).
    pub subformat: Option<String>,
    /// vpc: keep the size instead of rounding it to a CHS geometry.
    pub force_size: Option<bool>,
    /// vdi: preallocate every block.
    pub static_image: Option<bool>,
    /// vmdk: `ddb.adapterType`.
    pub adapter_type: Option<String>,
    /// vmdk: version 6 (`ddb.virtualHWVersion = "6"`).
    pub compat6: Option<bool>,
    /// vmdk: `ddb.virtualHWVersion`.
    pub hwversion: Option<String>,
    /// vmdk: `ddb.toolsVersion`.
    pub toolsversion: Option<String>,
    /// vmdk: zeroed-grain grain table entries.
    pub zeroed_grain: Option<bool>,
    /// qed: clusters per table.
    pub table_size: Option<u64>,
    /// vhdx: payload block size (0: chosen from the size).
    pub block_size: Option<u64>,
    /// vhdx: log size.
    pub log_size: Option<u64>,
    /// vhdx: mark new blocks `ZERO` in the BAT.
    pub block_state_zero: Option<bool>,
    /// The image file's no-copy-on-write attribute (btrfs); default off.
    pub nocow: Option<bool>,
    /// The image file's extent size hint in bytes; QEMU's default 1 MiB.
    pub extent_size_hint: Option<u64>,
}

impl CreateOptions {
    /// Parses an accumulated `-o` list for `format` and converts it
    /// (stages 2 and 3, without the consistency checks of
    /// [`CreateOptions::validate`]).
    pub fn parse(format: ImageFormat, list: &OptionList) -> Result<Self, OptsError> {
        Self::from_parsed(&ParsedOptions::parse(format, list)?)
    }

    /// Converts first-stage options into typed ones, rejecting unknown
    /// enumeration values (`compat`, `compression_type`, `preallocation`).
    pub fn from_parsed(parsed: &ParsedOptions) -> Result<Self, OptsError> {
        let text = |key: &str| parsed.get(key).map(|v| v.raw.clone());
        let number = |key: &str| parsed.get(key).and_then(|v| v.number);
        let boolean = |key: &str| parsed.get(key).and_then(|v| v.boolean);
        let preallocation = match (parsed.format(), text("preallocation")) {
            (_, None) => None,
            (ImageFormat::Qcow2, Some(value)) => Some(Preallocation::parse(&value)?),
            (_, Some(value)) => match Preallocation::parse(&value) {
                Ok(Preallocation::Metadata) => {
                    return Err(OptsError::UnsupportedPreallocation(Preallocation::Metadata))
                }
                Ok(mode) => Some(mode),
                Err(_) => return Err(OptsError::InvalidParameterValue(value)),
            },
        };
        Ok(Self {
            size: number("size"),
            compat: text("compat").map(|v| Compat::parse(&v)).transpose()?,
            backing_file: text("backing_file"),
            backing_fmt: text("backing_fmt"),
            data_file: text("data_file"),
            data_file_raw: boolean("data_file_raw"),
            cluster_size: number("cluster_size"),
            extended_l2: boolean("extended_l2"),
            preallocation,
            lazy_refcounts: boolean("lazy_refcounts"),
            refcount_bits: number("refcount_bits"),
            compression_type: text("compression_type")
                .map(|v| CompressionType::parse(&v))
                .transpose()?,
            subformat: text("subformat"),
            force_size: boolean("force_size"),
            static_image: boolean("static"),
            adapter_type: text("adapter_type"),
            compat6: boolean("compat6"),
            hwversion: text("hwversion"),
            toolsversion: text("toolsversion"),
            zeroed_grain: boolean("zeroed_grain"),
            table_size: number("table_size"),
            block_size: number("block_size"),
            log_size: number("log_size"),
            block_state_zero: boolean("block_state_zero"),
            nocow: boolean("nocow"),
            extent_size_hint: number("extent_size_hint"),
        })
    }

    /// Checks the options for `format` the way qemu's driver does before
    /// creating, returning the first problem in qemu's order. For qcow2
    /// this also resolves `data_file_raw=on` to metadata preallocation.
    pub fn validate(&mut self, format: ImageFormat) -> Result<(), OptsError> {
        if self
            .extent_size_hint
            .is_some_and(|h| h > u64::from(u32::MAX))
        {
            return Err(OptsError::Invalid("Extent size hint is too large"));
        }
        match format {
            ImageFormat::Qcow2 => validate::qcow2(self),
            ImageFormat::Raw => Ok(()),
            ImageFormat::Vpc => validate::vpc(self),
            ImageFormat::Vdi => validate::vdi(self),
            ImageFormat::Vmdk => validate::vmdk(self),
            ImageFormat::Qed => validate::qed(self),
            ImageFormat::Vhdx => validate::vhdx(self),
            ImageFormat::Luks => Ok(()),
        }
    }

    /// The size, or [`OptsError::SizeRequired`].
    pub fn require_size(&self) -> Result<u64, OptsError> {
        self.size.ok_or(OptsError::SizeRequired)
    }

    /// Compatibility level with its default (1.1).
    pub fn compat_or_default(&self) -> Compat {
        self.compat.unwrap_or(Compat::V1_1)
    }

    /// Cluster size with its default (65536).
    pub fn cluster_size_or_default(&self) -> u64 {
        self.cluster_size.unwrap_or(validate::DEFAULT_CLUSTER_SIZE)
    }

    /// Refcount width with its default (16).
    pub fn refcount_bits_or_default(&self) -> u64 {
        self.refcount_bits.unwrap_or(16)
    }

    /// Preallocation with its default (off).
    pub fn preallocation_or_default(&self) -> Preallocation {
        self.preallocation.unwrap_or_default()
    }

    /// Compression type with its default (zlib).
    pub fn compression_type_or_default(&self) -> CompressionType {
        self.compression_type.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: ImageFormat, list: &str) -> Result<CreateOptions, OptsError> {
        CreateOptions::from_parsed(&ParsedOptions::parse_str(format, list)?)
    }

    #[test]
    fn typed_values() {
        let opts = parse(
            ImageFormat::Qcow2,
            "compat=v2,cluster_size=4k,refcount_bits=0x10,lazy_refcounts=no,\
             compression_type=zstd,preallocation=full,data_file=a,,b,data_file_raw=y",
        )
        .unwrap();
        assert_eq!(opts.compat, Some(Compat::V0_10));
        assert_eq!(opts.cluster_size, Some(4096));
        assert_eq!(opts.refcount_bits, Some(16));
        assert_eq!(opts.lazy_refcounts, Some(false));
        assert_eq!(opts.compression_type, Some(CompressionType::Zstd));
        assert_eq!(opts.preallocation, Some(Preallocation::Full));
        assert_eq!(opts.data_file.as_deref(), Some("a,b"));
        assert_eq!(opts.data_file_raw, Some(true));
        assert_eq!(opts.size, None);
        assert_eq!(
            parse(ImageFormat::Qcow2, "compat=1.1").unwrap().compat,
            Some(Compat::V1_1)
        );
    }

    #[test]
    fn later_values_win() {
        let list = OptionList::from_args(["compat=1.1", "compat=0.10"]).unwrap();
        let opts = CreateOptions::parse(ImageFormat::Qcow2, &list).unwrap();
        assert_eq!(opts.compat, Some(Compat::V0_10));
    }

    /// Messages captured from `qemu-img create` (qemu-img 10.0.2).
    #[test]
    fn enum_errors_match_qemu_img() {
        let err = |format, list: &str| parse(format, list).unwrap_err().to_string();
        assert_eq!(
            err(ImageFormat::Qcow2, "compat=0.11"),
            "Parameter 'version' does not accept value '0.11'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "compat="),
            "Parameter 'version' does not accept value ''"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "compression_type=lz4"),
            "Parameter 'compression-type' does not accept value 'lz4'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "preallocation=sparse"),
            "Parameter 'preallocation' does not accept value 'sparse'"
        );
        assert_eq!(
            err(ImageFormat::Raw, "preallocation=metadata"),
            "Unsupported preallocation mode: metadata"
        );
        assert_eq!(
            err(ImageFormat::Raw, "preallocation=sparse"),
            "invalid parameter value: sparse"
        );
    }

    #[test]
    fn formats() {
        assert_eq!("qcow2".parse::<ImageFormat>(), Ok(ImageFormat::Qcow2));
        assert_eq!(
            "foo".parse::<ImageFormat>().unwrap_err().to_string(),
            "Unknown file format 'foo'"
        );
        assert_eq!(
            "cloop".parse::<ImageFormat>().unwrap_err().to_string(),
            "Format driver 'cloop' does not support image creation"
        );
        assert!(!OptsError::InvalidOptionList(String::new()).has_filename_prefix());
        // Captured: `qemu-img create -f qcow2 -b base.qcow2 x`.
        assert_eq!(
            OptsError::BackingFormatMissing {
                detected: Some("qcow2".to_owned())
            }
            .to_string(),
            "Backing file specified without backing format\nDetected format of qcow2."
        );
        assert!(OptsError::SizeRequired.has_filename_prefix());
    }
}
