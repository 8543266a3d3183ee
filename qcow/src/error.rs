//! The one error type of the `qcow` crate.
//!
//! Every variant names the offending field and value, so that a caller can
//! print it as a single line that tells the user what is wrong.

use std::io;

/// Errors from parsing, opening, reading, writing and checking qcow2 images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error from the underlying storage, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the library was doing when the error happened.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the qcow2 magic.
    #[error("image is not in qcow2 format (magic {magic:#010x})")]
    BadMagic {
        /// The four bytes found where the magic belongs.
        magic: u32,
    },
    /// The file is shorter than a qcow2 header.
    #[error("file too short for a qcow2 header ({len} bytes)")]
    TooShort {
        /// The file length.
        len: u64,
    },
    /// A header version other than 2 or 3.
    #[error("unsupported qcow2 version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A header field whose value is out of its allowed range.
    #[error("invalid {field}: {value} ({reason})")]
    InvalidField {
        /// The field's name as the qcow2 specification spells it.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A table that does not fit into the file or exceeds a sane bound.
    #[error("{table} at offset {offset:#x} with {entries} entries is invalid: {reason}")]
    InvalidTable {
        /// Which table ("L1 table", "refcount table", "snapshot table").
        table: &'static str,
        /// The table's offset in the file.
        offset: u64,
        /// Number of entries the header claims.
        entries: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Incompatible feature bits this implementation does not know.
    #[error("unsupported incompatible feature bits {bits:#x}{}", names_suffix(.names))]
    UnknownIncompatibleFeatures {
        /// The unknown bits.
        bits: u64,
        /// Their names from the image's feature name table, if any.
        names: Vec<String>,
    },
    /// Encrypted images are not supported at all.
    #[error("Unsupported encryption method {method}")]
    EncryptionNotSupported {
        /// The crypt_method header field.
        method: u32,
    },
    /// The corrupt bit is set and the image was opened for writing.
    #[error("image is marked corrupt and cannot be opened for writing; run 'img check -r all'")]
    CorruptImage,
    /// A write was attempted on an image opened read-only.
    #[error("image is opened read-only")]
    ReadOnly,
    /// A writable open of a format whose QEMU driver only reads (bochs),
    /// in QEMU's words.
    #[error("Image is read-only")]
    DriverReadOnly,
    /// A header extension is malformed.
    #[error("invalid header extension {ext_type:#010x} at offset {offset}: {reason}")]
    InvalidExtension {
        /// The extension's type.
        ext_type: u32,
        /// Its offset in the file.
        offset: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A metadata entry points at a place it must not.
    #[error("{what} entry {index} has invalid offset {offset:#x}: {reason}")]
    InvalidEntry {
        /// Which kind of entry ("L1", "L2", "refcount table").
        what: &'static str,
        /// The entry's index in its table.
        index: u64,
        /// The offset stored in it.
        offset: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A guest request outside the virtual disk.
    #[error("request at offset {offset} length {len} is beyond the end of the {size}-byte disk")]
    OutOfRange {
        /// Guest offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
    /// A compressed cluster that does not decompress into a full cluster.
    #[error("compressed cluster at host offset {host_offset:#x} is corrupt: {reason}")]
    BadCompressedCluster {
        /// Host offset of the compressed data.
        host_offset: u64,
        /// What went wrong.
        reason: String,
    },
    /// A backing chain problem (cycle, too deep, missing file).
    #[error("backing file {name:?}: {reason}")]
    Backing {
        /// The backing file name as recorded in the image.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// An option given to create or resize is invalid.
    #[error("invalid option {option}={value}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No snapshot has this ID or name.
    #[error("Can't find snapshot '{name}'")]
    SnapshotNotFound {
        /// The ID or name asked for.
        name: String,
    },
    /// A snapshot with this name exists already.
    #[error("Snapshot with name '{name}' already exists")]
    SnapshotExists {
        /// The name asked for.
        name: String,
    },
    /// A feature this implementation does not provide for this operation.
    /// `amend` refused a change, with qemu-img's message.
    #[error("{0}")]
    AmendRefused(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Probing found a format this crate cannot read (yet): the file is
    /// refused rather than read as raw.
    #[error("'{path}' is a {format} image, which img cannot read yet")]
    FormatNotReadable {
        /// The file's name as it was given.
        path: String,
        /// The probed format.
        format: crate::probe::Format,
    },
    /// A refcount would leave its range.
    #[error("refcount of host cluster {cluster} would {direction} (current value {value})")]
    RefcountRange {
        /// Host cluster index.
        cluster: u64,
        /// "overflow" or "drop below zero".
        direction: &'static str,
        /// The refcount before the change.
        value: u64,
    },
    /// A new image's L1 table would exceed QEMU's bound for this size and
    /// cluster size (qemu-img's words for its EFBIG).
    #[error(
        "The image size is too large for file format 'qcow2' (try using a larger cluster size)"
    )]
    ImageTooLarge {
        /// The virtual size asked for.
        size: u64,
        /// The cluster size.
        cluster_size: u64,
    },
    /// A snapshot table entry with more extra data than QEMU accepts
    /// (its words, with its hint line).
    #[error("Too much extra metadata in snapshot table entry {index}\nYou can force-remove this extra metadata with qemu-img check -r all")]
    SnapshotExtraDataTooLarge {
        /// The entry's index.
        index: u64,
        /// Its extra_data_size.
        size: u64,
    },
    /// A snapshot table larger than QEMU accepts, from entry `index` on
    /// (its words, with its hint line).
    #[error("Snapshot table is too big\nYou can force-remove all {overhanging} overhanging snapshots with qemu-img check -r all")]
    SnapshotTableTooBig {
        /// The first entry past the bound.
        index: u64,
        /// The table's length up to and with that entry.
        bytes: u64,
        /// Entries from `index` on.
        overhanging: u64,
    },
    /// A header field QEMU refuses to open an image with, in QEMU's words
    /// ("L1 table is too small", "Image is too big").
    #[error("{message}")]
    HeaderRefused {
        /// The header field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// QEMU's message.
        message: &'static str,
    },
    /// Metadata contradicts itself in a way that makes the operation unsafe.
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    /// The refcount table would have to grow past the entries QEMU lets it
    /// grow to (QEMU's EFBIG, which qemu-img prints as "File too large").
    #[error("refcount table would grow to {entries} entries, past {max}")]
    RefcountTableTooLarge {
        /// Entries the grown table would need.
        entries: u64,
        /// The bound.
        max: u64,
    },
    /// The image ran out of the host offsets its format can address.
    #[error("no space left in the image's address space ({0})")]
    NoSpace(&'static str),
    /// A snapshot table entry that is malformed or out of bounds.
    #[error("snapshot table entry {index}: invalid {field}: {value} ({reason})")]
    InvalidSnapshot {
        /// The entry's index in the table.
        index: u64,
        /// The field as the qcow2 specification spells it.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A field of a vpc, vdi, vmdk, vhdx or qed image that is out of range.
    #[error("{format} image: invalid {field}: {value} ({reason})")]
    InvalidFormatField {
        /// The format ("vpc", "vdi", ...).
        format: &'static str,
        /// The field as the format's specification spells it.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An encryption algorithm, mode or parameter we do not offer.
    #[error("unsupported {what} '{value}'")]
    CryptoUnsupported {
        /// What it is (an option name, "LUKS cipher", ...).
        what: &'static str,
        /// The value given or found.
        value: String,
    },
    /// A LUKS header that QEMU would refuse; the reason is QEMU's text.
    #[error("{reason}")]
    LuksHeader {
        /// The header field at fault.
        field: &'static str,
        /// Why it is refused, as QEMU words it.
        reason: String,
    },
    /// No key slot of a LUKS header opens with the given password.
    #[error("Invalid password, cannot unlock any keyslot")]
    InvalidPassword,
    /// An encrypted image opened for I/O without its key.
    #[error("Parameter '{option}' is required for cipher")]
    KeySecretRequired {
        /// The option that names the secret (`encrypt.key-secret`).
        option: String,
    },
    /// The encryption header pointer of a qcow2 image is invalid.
    #[error("{reason}")]
    CryptoHeaderExtension {
        /// The offset or length found.
        value: u64,
        /// QEMU's wording.
        reason: String,
    },
    /// A bitmap operation refused, in QEMU's words.
    #[error("{reason}")]
    BitmapOperation {
        /// Why, as QEMU words it.
        reason: String,
    },
    /// Metadata found inconsistent in the middle of an operation (QEMU's
    /// qcow2_signal_corruption): the operation fails with EIO, and an image
    /// open for writing has been marked corrupt. `during` is what failed,
    /// as QEMU's caller names it ("Failed to turn zero into data
    /// clusters"), once known.
    #[error("{}Input/output error", during.map(|d| format!("{d}: ")).unwrap_or_default())]
    CorruptionFound {
        /// What was found, in QEMU's words.
        event: String,
        /// Whether the corrupt bit was set (the image was writable).
        marked: bool,
        /// The failed step, in QEMU's words.
        during: Option<&'static str>,
    },
    /// A write that falls back to writing zeros after the lookup before
    /// it found corruption and marked its image: QEMU's node has no
    /// driver left by then and its block layer fails the fallback with
    /// ENOMEDIUM. `event` is the corruption found, as in
    /// [`Error::CorruptionFound`].
    #[error("No medium found")]
    NoMediumAfterCorruption {
        /// What was found, in QEMU's words.
        event: String,
    },
    /// A request a driver refuses after reporting why on a line of its
    /// own, as QEMU's error_report does before the request fails with the
    /// errno of `source`.
    #[error("{line}: {source}")]
    Reported {
        /// The line QEMU prints, in its words.
        line: &'static str,
        /// The errno the request fails with.
        #[source]
        source: io::Error,
    },
    /// A raw window's `offset` or `size` that does not fit the file
    /// beneath, in QEMU's words.
    #[error("{reason}")]
    RawWindow {
        /// The option (`offset` or `size`).
        option: &'static str,
        /// The value given.
        value: u64,
        /// Why it is refused, as QEMU words it.
        reason: String,
    },
    /// A snapshot's L1 table refused when the snapshot is used (loaded,
    /// applied, deleted, walked), with the words of QEMU's
    /// qcow2_validate_table: "Snapshot L1 table too large" (EFBIG) or
    /// "Snapshot L1 table offset invalid" (EINVAL). QEMU opens such an
    /// image; only the snapshot is unusable.
    #[error("{message}")]
    SnapshotL1Refused {
        /// The snapshot's ID.
        id: String,
        /// `l1_size` or `l1_table_offset`.
        field: &'static str,
        /// The value found.
        value: u64,
        /// QEMU's message.
        message: &'static str,
    },
    /// Raising the refcount of a referenced host cluster would need a
    /// refcount block the image lacks: the cluster is referenced but no
    /// refcount covers it (a corrupt image). QEMU allocates the block and
    /// fails the operation with EAGAIN; here nothing is changed.
    #[error("host cluster {cluster} is referenced but no refcount block covers it")]
    RefcountBlockMissing {
        /// The host cluster index.
        cluster: u64,
    },
}

fn names_suffix(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

impl Error {
    /// QEMU's line on stderr for a [`Error::CorruptionFound`], printed when
    /// the corruption is found (before the operation's own error).
    pub fn corruption_event_line(&self) -> Option<String> {
        match self {
            Error::CorruptionFound {
                event,
                marked: true,
                ..
            } => Some(format!(
                "qcow2: Marking image as corrupt: {event}; further corruption events will be \
                 suppressed"
            )),
            Error::CorruptionFound { event, .. } => Some(format!(
                "qcow2: Image is corrupt: {event}; further non-fatal corruption events will be \
                 suppressed"
            )),
            Error::NoMediumAfterCorruption { event } => Some(format!(
                "qcow2: Marking image as corrupt: {event}; further corruption events will be \
                 suppressed"
            )),
            _ => None,
        }
    }

    /// Names the step that failed on a [`Error::CorruptionFound`] that
    /// does not name one yet (QEMU's `error_setg_errno(errp, -EIO, ...)`
    /// in the caller); other errors pass unchanged.
    pub fn during(self, step: &'static str) -> Self {
        match self {
            Error::CorruptionFound {
                event,
                marked,
                during: None,
            } => Error::CorruptionFound {
                event,
                marked,
                during: Some(step),
            },
            other => other,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
