//! A small, bounded ISO 9660 reader (ECMA-119) with the Rock Ridge (`NM`
//! through SUSP) and Joliet name extensions: enough to list a disc's
//! directories, find a file by path and copy it out.
//!
//! Everything read from the image is checked before it sizes an
//! allocation or a loop: extents must lie inside the image, a directory
//! is at most [`MAX_DIR_BYTES`] and [`MAX_DIR_ENTRIES`] records, a path at
//! most [`MAX_DEPTH`] levels, a walk visits at most [`MAX_WALK_ENTRIES`]
//! entries and each directory extent once (so a directory that contains
//! itself ends the walk with [`IsoError::DirectoryLoop`]), and a Rock Ridge
//! continuation chain is at most [`MAX_CONTINUATIONS`] areas.
//!
//! ```no_run
//! let file = std::fs::File::open("debian.iso").unwrap();
//! let iso = iso9660::IsoImage::open(file).unwrap();
//! if let Some(cfg) = iso.lookup("/isolinux/isolinux.cfg").unwrap() {
//!     let text = iso.read_file(&cfg, 1 << 20).unwrap();
//!     println!("{}", String::from_utf8_lossy(&text));
//! }
//! ```

mod descriptor;
mod image;
mod record;
mod source;
mod susp;

pub use descriptor::{NameKind, VolumeDescriptor};
pub use image::{Entry, Extent, IsoImage};
pub use source::ReadAt;

/// Bytes of one directory at most (its extents together).
pub const MAX_DIR_BYTES: u64 = 4 << 20;
/// Records of one directory at most.
pub const MAX_DIR_ENTRIES: usize = 65_536;
/// Levels of a path at most (ISO 9660 itself allows 8; Rock Ridge more).
pub const MAX_DEPTH: usize = 64;
/// Entries a whole-tree walk visits at most.
pub const MAX_WALK_ENTRIES: usize = 1_000_000;
/// Rock Ridge continuation areas (`CE`) followed for one record at most.
pub const MAX_CONTINUATIONS: usize = 16;
/// Volume descriptors read at most before the set terminator.
pub const MAX_DESCRIPTORS: usize = 64;
/// Bytes of names and paths one directory listing holds at most (the
/// entries' `name` and `path` together), so that a deep tree of long
/// names cannot make one listing huge.
pub const MAX_LISTING_BYTES: usize = 16 << 20;
/// Extents of one multi-extent file at most.
pub const MAX_FILE_EXTENTS: usize = 4096;

/// Why an image or one of its records was refused. Each message is one
/// line naming the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Reading the image failed.
    #[error("reading {length} bytes at offset {offset} of the ISO image: {source}")]
    Io {
        /// Byte offset of the read.
        offset: u64,
        /// Its length.
        length: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image is too small to hold the system area and a descriptor.
    #[error("not an ISO 9660 image: {size} bytes is too small")]
    TooSmall {
        /// The image's size.
        size: u64,
    },
    /// Sector 16 does not hold a volume descriptor (`CD001`).
    #[error("not an ISO 9660 image: no volume descriptor (CD001) at sector {sector}")]
    NoDescriptor {
        /// The sector looked at.
        sector: u64,
    },
    /// The descriptor set has no primary volume descriptor.
    #[error("ISO image has no primary volume descriptor")]
    NoPrimary,
    /// The descriptor set has no terminator within [`MAX_DESCRIPTORS`].
    #[error("ISO image has more than {max} volume descriptors")]
    TooManyDescriptors {
        /// The limit.
        max: usize,
    },
    /// A logical block size other than 512, 1024 or 2048.
    #[error("ISO volume descriptor: logical block size {size} is not 512, 1024 or 2048")]
    BlockSize {
        /// The value read.
        size: u32,
    },
    /// An extent reaches past the end of the image.
    #[error("ISO {what}: extent at block {block} of {length} bytes ends past the image's {image_size} bytes")]
    ExtentPastEnd {
        /// What the extent holds.
        what: &'static str,
        /// Its first logical block.
        block: u32,
        /// Its length in bytes.
        length: u64,
        /// The image's size.
        image_size: u64,
    },
    /// A directory is larger than [`MAX_DIR_BYTES`].
    #[error("ISO directory '{shown}': {bytes} bytes is over the limit of {max}", shown = .path.escape_debug())]
    DirectoryTooLarge {
        /// The directory's path.
        path: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A directory has more than [`MAX_DIR_ENTRIES`] records.
    #[error("ISO directory '{shown}': more than {max} entries", shown = .path.escape_debug())]
    TooManyEntries {
        /// The directory's path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A directory record is malformed.
    #[error("ISO directory '{shown}': bad record at byte {at}: {reason}", shown = .path.escape_debug())]
    BadRecord {
        /// The directory's path.
        path: String,
        /// Byte position of the record in the directory.
        at: usize,
        /// What is wrong.
        reason: String,
    },
    /// A path or a walk goes deeper than [`MAX_DEPTH`].
    #[error("ISO path '{shown}' is deeper than {max} levels", shown = .path.escape_debug())]
    TooDeep {
        /// The path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A directory's names and paths together pass [`MAX_LISTING_BYTES`].
    #[error("ISO directory '{shown}': names and paths over {max} bytes", shown = .path.escape_debug())]
    ListingTooLarge {
        /// The directory's path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A walk met a directory it had already read.
    #[error("ISO directory '{shown}' loops back to block {block}", shown = .path.escape_debug())]
    DirectoryLoop {
        /// The directory's path.
        path: String,
        /// The extent met again.
        block: u32,
    },
    /// A walk visited more than [`MAX_WALK_ENTRIES`] entries.
    #[error("ISO image has more than {max} entries")]
    TooManyWalkEntries {
        /// The limit.
        max: usize,
    },
    /// A file is larger than the caller allows.
    #[error("ISO file '{shown}': {size} bytes is over the limit of {max}", shown = .path.escape_debug())]
    FileTooLarge {
        /// The file's path.
        path: String,
        /// Its size.
        size: u64,
        /// The caller's limit.
        max: u64,
    },
    /// A file made of more than [`MAX_FILE_EXTENTS`] extents.
    #[error("ISO file '{shown}': more than {max} extents", shown = .path.escape_debug())]
    TooManyExtents {
        /// The file's path.
        path: String,
        /// The limit.
        max: usize,
    },
    /// An operation on a directory that needs a file, or the reverse.
    #[error("ISO path '{shown}' is not a {expected}", shown = .path.escape_debug())]
    WrongKind {
        /// The path.
        path: String,
        /// `file` or `directory`.
        expected: &'static str,
    },
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, IsoError>;
