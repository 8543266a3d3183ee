//! Typed option values of the `img` command line and their parsers, which
//! reject bad input with qemu-img's messages (see [`UsageError`]).

use std::fmt;

use crate::opts::list::split_options;
use crate::opts::Preallocation;
use crate::size::{cvtnum, cvtnum_full, ResizeSize};

pub use crate::report::OutputFormat;

/// A bad command-line value, worded as qemu-img words it.
///
/// Each line is printed as `img: LINE`; when `try_help` is set a last line
/// `Try 'img SUBCOMMAND --help' for more info` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// Message lines, without the program prefix.
    pub lines: Vec<String>,
    /// Whether qemu-img adds the "Try ... --help" line.
    pub try_help: bool,
}

impl UsageError {
    /// A one-line error without the help hint.
    pub fn plain(message: impl Into<String>) -> Self {
        Self {
            lines: vec![message.into()],
            try_help: false,
        }
    }

    /// A one-line error followed by the help hint.
    pub fn with_help(message: impl Into<String>) -> Self {
        Self {
            lines: vec![message.into()],
            try_help: true,
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

impl std::error::Error for UsageError {}

/// Parses `--output`: `human` or `json`.
pub fn parse_output_format(value: &str) -> Result<OutputFormat, UsageError> {
    match value {
        "human" => Ok(OutputFormat::Human),
        "json" => Ok(OutputFormat::Json),
        _ => Err(UsageError::with_help(format!(
            "--output expects 'human' or 'json' not '{value}'"
        ))),
    }
}

/// What `check -r` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// `-r leaks`: only leaked clusters.
    Leaks,
    /// `-r all`: leaks and corruptions.
    All,
}

/// Parses `check -r`: `leaks` or `all`.
pub fn parse_repair_mode(value: &str) -> Result<RepairMode, UsageError> {
    match value {
        "leaks" => Ok(RepairMode::Leaks),
        "all" => Ok(RepairMode::All),
        _ => Err(UsageError::with_help(format!(
            "--repair (-r) expects 'leaks' or 'all' not '{value}'"
        ))),
    }
}

/// A cache mode (`-t`, `-T`), as qemu's `bdrv_parse_cache_mode` knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// `none` or `off`: O_DIRECT, no flushes needed by the host cache.
    None,
    /// `writeback`: host page cache, flush on request.
    Writeback,
    /// `writethrough`: host page cache, every write flushed.
    Writethrough,
    /// `directsync`: O_DIRECT and every write flushed.
    Directsync,
    /// `unsafe`: host page cache, flushes ignored.
    Unsafe,
}

impl CacheMode {
    /// Parses a cache mode name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" | "off" => Some(Self::None),
            "writeback" => Some(Self::Writeback),
            "writethrough" => Some(Self::Writethrough),
            "directsync" => Some(Self::Directsync),
            "unsafe" => Some(Self::Unsafe),
            _ => None,
        }
    }

    /// True when the host page cache is bypassed (O_DIRECT).
    pub fn direct(self) -> bool {
        matches!(self, Self::None | Self::Directsync)
    }

    /// True when every write must be followed by a flush.
    pub fn writethrough(self) -> bool {
        matches!(self, Self::Writethrough | Self::Directsync)
    }

    /// True when flushes are ignored.
    pub fn ignores_flush(self) -> bool {
        self == Self::Unsafe
    }
}

/// Parses `convert -t` (`Invalid cache option: X`).
pub fn parse_target_cache(value: &str) -> Result<CacheMode, UsageError> {
    CacheMode::parse(value)
        .ok_or_else(|| UsageError::plain(format!("Invalid cache option: {value}")))
}

/// Parses the source/image cache `-T` of convert, check and compare
/// (`Invalid source cache option: X`).
pub fn parse_source_cache(value: &str) -> Result<CacheMode, UsageError> {
    CacheMode::parse(value)
        .ok_or_else(|| UsageError::plain(format!("Invalid source cache option: {value}")))
}

/// Parses `resize --preallocation` (`Invalid preallocation mode 'X'`).
pub fn parse_preallocation(value: &str) -> Result<Preallocation, UsageError> {
    Preallocation::parse(value)
        .map_err(|_| UsageError::plain(format!("Invalid preallocation mode '{value}'")))
}

/// Parses `create`'s SIZE argument (named "image size" in errors).
pub fn parse_image_size(value: &str) -> Result<u64, UsageError> {
    cvtnum("image size", value).map_err(|e| UsageError::plain(e.to_string()))
}

/// Parses `resize`'s `[+-]SIZE` argument.
pub fn parse_resize_size(value: &str) -> Result<ResizeSize, UsageError> {
    ResizeSize::parse(value).map_err(|e| UsageError::plain(e.to_string()))
}

/// Parses `map --start-offset`.
pub fn parse_start_offset(value: &str) -> Result<u64, UsageError> {
    cvtnum("start offset", value).map_err(|e| UsageError::plain(e.to_string()))
}

/// Parses `map --max-length`.
pub fn parse_max_length(value: &str) -> Result<u64, UsageError> {
    cvtnum("max length", value).map_err(|e| UsageError::plain(e.to_string()))
}

/// Largest `convert -m`.
pub const MAX_COROUTINES: i64 = 16;

/// Parses `convert -m` (1 to 16, size syntax as in qemu-img).
pub fn parse_coroutines(value: &str) -> Result<u64, UsageError> {
    cvtnum_full("number of coroutines", value, 1, MAX_COROUTINES)
        .map_err(|e| UsageError::plain(e.to_string()))
}

/// Largest `convert -S`: 16 MiB.
pub const MAX_SPARSE_SIZE: u64 = 32768 * 512;

/// Parses `convert -S`: a multiple of 512 up to 16 MiB; 0 disables sparse
/// detection.
pub fn parse_sparse_size(value: &str) -> Result<u64, UsageError> {
    let size = cvtnum("buffer size for sparse output", value)
        .map_err(|e| UsageError::plain(e.to_string()))?;
    if size & 511 != 0 || size > MAX_SPARSE_SIZE {
        return Err(UsageError::plain(format!(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 \
             up to {MAX_SPARSE_SIZE}. Select 0 to disable sparse detection (fully allocates \
             output)."
        )));
    }
    Ok(size)
}

/// Which internal snapshot `convert -l` reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotParam {
    /// A bare argument: a snapshot ID or name.
    IdOrName(String),
    /// `snapshot.id=ID,snapshot.name=NAME` (either or both).
    Spec {
        /// `snapshot.id`.
        id: Option<String>,
        /// `snapshot.name`.
        name: Option<String>,
    },
}

/// Parses `convert -l`.
pub fn parse_snapshot_param(value: &str) -> Result<SnapshotParam, UsageError> {
    if !value.starts_with("snapshot.") {
        return Ok(SnapshotParam::IdOrName(value.to_owned()));
    }
    let mut id = None;
    let mut name = None;
    for pair in split_options(value) {
        match pair.key.as_str() {
            "snapshot.id" => id = Some(pair.value),
            "snapshot.name" => name = Some(pair.value),
            other => {
                return Err(UsageError {
                    lines: vec![
                        format!("Invalid parameter '{other}'"),
                        format!("Failed in parsing snapshot param '{value}'"),
                    ],
                    try_help: false,
                })
            }
        }
    }
    Ok(SnapshotParam::Spec { id, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages captured from qemu-img 10.0.2.
    #[test]
    fn messages_match_qemu_img() {
        assert_eq!(
            parse_output_format("xml").unwrap_err(),
            UsageError::with_help("--output expects 'human' or 'json' not 'xml'")
        );
        assert_eq!(
            parse_repair_mode("foo").unwrap_err(),
            UsageError::with_help("--repair (-r) expects 'leaks' or 'all' not 'foo'")
        );
        assert_eq!(
            parse_target_cache("foo").unwrap_err().to_string(),
            "Invalid cache option: foo"
        );
        assert_eq!(
            parse_source_cache("foo").unwrap_err().to_string(),
            "Invalid source cache option: foo"
        );
        assert_eq!(
            parse_preallocation("foo").unwrap_err().to_string(),
            "Invalid preallocation mode 'foo'"
        );
        assert_eq!(
            parse_sparse_size("3").unwrap_err().to_string(),
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 \
             up to 16777216. Select 0 to disable sparse detection (fully allocates output)."
        );
        assert_eq!(
            parse_sparse_size("1x").unwrap_err().to_string(),
            "Invalid buffer size for sparse output specified: '1x'."
        );
        assert_eq!(parse_sparse_size("4k"), Ok(4096));
        assert_eq!(parse_sparse_size("0"), Ok(0));
        assert_eq!(
            parse_coroutines("0").unwrap_err().to_string(),
            "Invalid number of coroutines specified. Must be between 1 and 16."
        );
        assert_eq!(
            parse_coroutines("x").unwrap_err().to_string(),
            "Invalid number of coroutines specified: 'x'."
        );
        assert_eq!(
            parse_start_offset("-1").unwrap_err().to_string(),
            "Invalid start offset specified. Must be between 0 and 9223372036854775807."
        );
        assert_eq!(
            parse_max_length("1x").unwrap_err().to_string(),
            "Invalid max length specified: '1x'."
        );
        assert_eq!(
            parse_snapshot_param("snapshot.foo=1").unwrap_err().lines,
            vec![
                "Invalid parameter 'snapshot.foo'".to_owned(),
                "Failed in parsing snapshot param 'snapshot.foo=1'".to_owned()
            ]
        );
    }

    #[test]
    fn values() {
        assert_eq!(parse_output_format("json"), Ok(OutputFormat::Json));
        assert_eq!(parse_repair_mode("all"), Ok(RepairMode::All));
        assert_eq!(CacheMode::parse("off"), Some(CacheMode::None));
        assert!(CacheMode::Directsync.direct() && CacheMode::Directsync.writethrough());
        assert!(CacheMode::Unsafe.ignores_flush());
        assert_eq!(
            parse_snapshot_param("s1"),
            Ok(SnapshotParam::IdOrName("s1".to_owned()))
        );
        assert_eq!(
            parse_snapshot_param("snapshot.id=1,snapshot.name=a"),
            Ok(SnapshotParam::Spec {
                id: Some("1".to_owned()),
                name: Some("a".to_owned())
            })
        );
        assert_eq!(parse_image_size("1G"), Ok(1 << 30));
        assert_eq!(parse_resize_size("-1G"), Ok(ResizeSize::Shrink(1 << 30)));
    }
}
