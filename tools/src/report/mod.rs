//! Reports of the `img` subcommands as plain data, with renderers that
//! reproduce qemu-img 10's human and JSON output byte for byte. Nothing
//! here touches an image: the caller fills the structs from the library.

pub mod check;
pub mod compare;
pub mod encrypt;
pub mod info;
pub mod localtime;
pub mod map;
pub mod qobject;

pub use check::{CheckMessage, CheckReport};
pub use compare::{CompareError, CompareReport, CompareResult};
pub use info::{
    BitmapInfo, ChildInfo, FileInfo, FormatSpecific, ImageInfo, Qcow2Info, SnapshotInfo,
};
pub use map::{MapEntry, MapError, MapPrinter};

/// `--output`: qemu-img's two output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Text for people (the default).
    #[default]
    Human,
    /// JSON for programs.
    Json,
}
