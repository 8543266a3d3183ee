//! Metadata check and repair of a quiescent qcow2 file, with the semantics,
//! counts and messages of `qemu-img check` (QEMU 10).
//!
//! [`check`] works on the raw storage, with no open image: it parses the
//! header itself, computes a reference count for every host cluster from
//! the metadata (header, L1 and L2 tables of the active image and of every
//! snapshot, data clusters, the snapshot table, the refcount structure and
//! the bitmaps), compares it with the stored refcounts and checks the
//! COPIED flags. With [`Repair::Leaks`] or [`Repair::All`] it fixes what
//! `qemu-img check -r leaks|all` fixes, up to rebuilding the whole refcount
//! structure. A caller that repaired something runs [`check`] again to
//! report what remains, as `qemu-img check` does.
//!
//! The layout follows QEMU's `qcow2_check_refcounts`:
//! - [`imrt`]: the computed reference counts;
//! - `stored`: the refcounts in the image;
//! - `walk`: computing references (QEMU's calculate_refcounts);
//! - `compare`: comparing and the COPIED flags;
//! - `rebuild`: writing a new refcount structure;
//! - `snapshots`, `bitmaps`: the snapshot table and the bitmap directory;
//! - `overlap`: refusing repair writes that would hit other metadata.
//!
//! Memory is bounded by [`imrt::MAX_IMRT_BYTES`] for the computed counts
//! (one count of the image's refcount width per host cluster) plus one L1
//! table (at most 32 MiB), one cluster and 16 refcount blocks.

mod bitmaps;
mod compare;
pub mod imrt;
mod overlap;
mod rebuild;
mod reorder;
mod reorder_walks;
mod snapshots;
mod stored;
mod walk;

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::extensions::{Extension, HeaderCluster, EXT_BITMAPS};
use crate::header::{
    Header, AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
    MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
};
use crate::snapshot_table::Snapshot;
use crate::storage::Storage;

use imrt::Imrt;
use overlap::ol;
use stored::Stored;

pub use reorder::{change_refcount_order, change_refcount_order_with_progress};

/// What [`check`] may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Only report (`qemu-img check`).
    None,
    /// Fix leaked clusters (`-r leaks`).
    Leaks,
    /// Fix leaks and corruptions (`-r all`).
    All,
}

impl Repair {
    fn leaks(self) -> bool {
        self != Repair::None
    }
    fn errors(self) -> bool {
        self == Repair::All
    }
}

/// The outcome of a check, with the fields of `qemu-img check
/// --output=json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Inconsistencies that may lose data.
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references.
    pub leaks: u64,
    /// Errors that kept the check from completing some part.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Highest used host cluster plus one, in bytes.
    pub image_end_offset: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters allocated in the active image.
    pub allocated_clusters: u64,
    /// Allocated guest clusters not contiguous with the previous one.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// What QEMU would print on stderr, one line each, in order.
    pub messages: Vec<String>,
    /// Set when the check stopped early, as QEMU's would with "Check
    /// failed: REASON" (the reason is QEMU's errno text); the counts are
    /// then partial and the caller should not print the summary.
    pub aborted: Option<String>,
    /// A repair signalled corruption ("Marking image as corrupt"). QEMU's
    /// open image is then unusable: the refcount fixes still in its cache
    /// are never written (unless the check ends clean and clears the
    /// corrupt bit), and a double check fails with "No medium found".
    pub image_unusable: bool,
}

/// Whether QEMU prints this message of a check with `error_report`, which
/// puts the program name first (`qemu-img: ERROR snapshot table too
/// large`); it prints the others plainly with `fprintf`.
pub fn is_error_report(message: &str) -> bool {
    message == "ERROR snapshot table too large"
        || message == "ERROR snapshot table offset invalid"
        || message.starts_with("ERROR failed to read the snapshot table: ")
}

/// Checks (and with `repair`, repairs) the image in `storage`.
///
/// `data_file` is the external data file if the image has one; QEMU's check
/// never reads it (data clusters there are not refcounted), and neither
/// does this one, so `None` is fine too.
///
/// Returns `Err` when the image cannot be opened (a header QEMU would also
/// refuse), on storage I/O errors, and when the file has more clusters than
/// the computed refcounts may take memory for ([`imrt::MAX_IMRT_BYTES`]).
pub fn check(
    storage: &dyn Storage,
    data_file: Option<&dyn Storage>,
    repair: Repair,
) -> Result<CheckReport> {
    let _ = data_file;
    let mut ctx = Ctx::open(storage, repair)?;
    let mut report = CheckReport::default();
    let outcome = ctx.run(&mut report);
    report.messages = std::mem::take(&mut ctx.messages);
    report.image_unusable = ctx.image_unusable();
    match outcome {
        Ok(()) => Ok(report),
        Err(Stop::Abort(reason)) => {
            report.aborted = Some(reason.to_string());
            Ok(report)
        }
        Err(Stop::Fail(e)) => Err(e),
    }
}

/// Why a check phase stopped.
enum Stop {
    /// QEMU would fail the check with this errno text.
    Abort(&'static str),
    /// An error of ours (I/O, or a bound).
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fail(e)
    }
}

type Flow<T> = std::result::Result<T, Stop>;

const EIO: &str = "Input/output error";
const EFBIG: &str = "File too large";
const EINVAL: &str = "Invalid argument";
const ENOMEM: &str = "Cannot allocate memory";

/// C's `%#x`: hexadecimal with "0x", except that zero is plain "0".
pub(crate) fn c_alt_hex(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// QEMU's BdrvCheckResult counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    corruptions: u64,
    leaks: u64,
    check_errors: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
}

impl Counts {
    fn add_to(&self, r: &mut CheckReport) {
        r.corruptions += self.corruptions;
        r.leaks += self.leaks;
        r.check_errors += self.check_errors;
        r.corruptions_fixed += self.corruptions_fixed;
        r.leaks_fixed += self.leaks_fixed;
    }

    /// Moves one corruption to the fixed column.
    fn fixed_corruptions(&mut self, n: u64) {
        self.corruptions = self.corruptions.saturating_sub(n);
        self.corruptions_fixed += n;
    }
}

/// Fragmentation counters (QEMU's BlockFragInfo).
#[derive(Debug, Clone, Copy, Default)]
struct Frag {
    total: u64,
    allocated: u64,
    fragmented: u64,
    compressed: u64,
}

/// Everything the check knows about the image.
struct Ctx<'a> {
    storage: &'a dyn Storage,
    fix: Repair,
    header: Header,
    cluster_bits: u32,
    cluster_size: u64,
    /// Whether guest data lives in an external data file.
    data_file: bool,
    /// The active L1 table as loaded (QEMU's s->l1_table).
    l1_table: Vec<u64>,
    /// Snapshot table pointer as stored in the header.
    raw_nb_snapshots: u32,
    raw_snapshots_offset: u64,
    /// The snapshot table as read by the check.
    snapshots: Vec<Snapshot>,
    snapshots_offset: u64,
    snapshots_size: u64,
    /// The encryption header's (offset, length), if any.
    crypto_header: Option<(u64, u64)>,
    bitmaps: Option<bitmaps::BitmapsExt>,
    stored: Stored,
    imrt: Option<Imrt>,
    file_len: u64,
    res: Counts,
    frag: Frag,
    image_end_offset: u64,
    messages: Vec<String>,
    /// Freed clusters to discard once their refcounts are durable.
    discards: Vec<u64>,
    signaled_corruption: bool,
}

impl<'a> Ctx<'a> {
    /// Opens the image as QEMU does in check mode: the snapshot table is
    /// not read here (the check reads it and may repair it).
    fn open(storage: &'a dyn Storage, fix: Repair) -> Result<Ctx<'a>> {
        let file_len = storage.len()?;
        let mut start = [0u8; 24];
        storage.read_at(&mut start, 0)?;
        let bits = BigEndian::read_u32(&start[20..24]).clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
        let mut buf = vec![0u8; file_len.min(1 << bits) as usize];
        storage.read_at(&mut buf, 0)?;
        let (raw_nb_snapshots, raw_snapshots_offset) = if buf.len() >= 72 {
            let nb = BigEndian::read_u32(&buf[60..64]);
            let offset = BigEndian::read_u64(&buf[64..72]);
            buf[60..72].fill(0);
            (nb, offset)
        } else {
            (0, 0)
        };
        // Tables past the end of the file read as zeros and are reported as
        // corruptions by the walk, as QEMU's check does, instead of refusing
        // the image; their sizes stay bounded by the header's own limits.
        let hc = HeaderCluster::parse_for_check(&buf, u64::MAX)?;
        let mut messages = Vec::new();
        let ignored_bitmaps = bitmaps::ignored(&hc);
        if ignored_bitmaps {
            messages.push(if hc.header.version < 3 {
                "warning: This qcow2 v2 image contains bitmaps, but they may have been modified \
                 by a program without persistent bitmap support; so now they must all be \
                 considered inconsistent"
            } else {
                "warning: a program lacking bitmap support modified this file, so all bitmaps \
                 are now considered inconsistent"
            });
            messages.push(
                "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.",
            );
        }
        let unknown_autoclear =
            hc.header.autoclear_features & !(AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW) != 0;
        if fix != Repair::None && (ignored_bitmaps || unknown_autoclear) {
            // Opening for writing, QEMU rewrites the header without the
            // stale bitmaps extension and unknown autoclear bits.
            let mut updated = hc.clone();
            updated.header.nb_snapshots = raw_nb_snapshots;
            updated.header.snapshots_offset = raw_snapshots_offset;
            updated.header.autoclear_features &= AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;
            if ignored_bitmaps {
                updated.extensions.retain(
                    |e| !matches!(e, Extension::Other { ext_type, .. } if *ext_type == EXT_BITMAPS),
                );
            }
            let bytes = updated.write()?;
            let len = bytes.len().min(buf.len());
            storage.write_at(&bytes[..len], 0)?;
            storage.flush()?;
        }
        let header = hc.header.clone();
        let cluster_bits = header.cluster_bits;
        let cluster_size = header.cluster_size();
        let bitmaps = bitmaps::parse_extension(&hc)?;
        let crypto_header = hc.crypto_header()?;

        // Both sizes were bounded by Header::validate (32 MiB, 8 MiB).
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        storage.read_at(&mut raw, header.l1_table_offset)?;
        let l1_table = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
        let mut raw = vec![0u8; header.refcount_table_clusters as usize * cluster_size as usize];
        storage.read_at(&mut raw, header.refcount_table_offset)?;
        let table = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
        let stored = Stored::new(
            table,
            header.refcount_table_offset,
            cluster_bits,
            header.refcount_order,
        );
        Ok(Ctx {
            storage,
            fix,
            cluster_bits,
            cluster_size,
            data_file: header.has_data_file(),
            header,
            l1_table,
            raw_nb_snapshots,
            raw_snapshots_offset,
            snapshots: Vec::new(),
            snapshots_offset: 0,
            snapshots_size: 0,
            crypto_header,
            bitmaps,
            stored,
            imrt: None,
            file_len,
            res: Counts::default(),
            frag: Frag::default(),
            image_end_offset: 0,
            messages: messages.into_iter().map(str::to_string).collect(),
            discards: Vec::new(),
            signaled_corruption: false,
        })
    }

    fn msg(&mut self, line: String) {
        self.messages.push(line);
    }

    /// "Repairing" or "ERROR", as QEMU prefixes fixable findings.
    fn verb(&self, fixing: bool) -> &'static str {
        if fixing {
            "Repairing"
        } else {
            "ERROR"
        }
    }

    /// QEMU's qcow2_co_check_locked.
    fn run(&mut self, report: &mut CheckReport) -> Flow<()> {
        // Snapshot table first; its counts are kept apart and added last.
        let outcome = self.read_snapshot_table();
        let snapshot_res = std::mem::take(&mut self.res);
        if outcome.is_err() {
            snapshot_res.add_to(report);
            return outcome;
        }
        let outcome = self.check_refcounts();
        self.res.add_to(report);
        report.image_end_offset = self.image_end_offset;
        report.total_clusters = self.frag.total;
        report.allocated_clusters = self.frag.allocated;
        report.fragmented_clusters = self.frag.fragmented;
        report.compressed_clusters = self.frag.compressed;
        if outcome.is_err() {
            snapshot_res.add_to(report);
            return outcome;
        }
        self.res = snapshot_res;
        let outcome = self.fix_snapshot_table();
        self.res.add_to(report);
        outcome?;
        if self.fix != Repair::None && report.check_errors == 0 && report.corruptions == 0 {
            self.mark_clean()?;
        }
        Ok(())
    }

    /// Clears the dirty and corrupt bits (QEMU's qcow2_mark_clean and
    /// qcow2_mark_consistent), after everything else is durable.
    fn mark_clean(&mut self) -> Result<()> {
        if self.header.version < 3 {
            return Ok(());
        }
        let mut raw = [0u8; 8];
        self.storage.read_at(&mut raw, 72)?;
        let features = BigEndian::read_u64(&raw);
        let cleared = features & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
        if cleared != features {
            // QEMU's qcow2_mark_clean and qcow2_mark_consistent flush the
            // caches first, even on an image made unusable.
            self.stored.write_back(self.storage)?;
            self.storage.flush()?;
            BigEndian::write_u64(&mut raw, cleared);
            self.storage.write_at(&raw, 72)?;
            self.storage.flush()?;
        }
        Ok(())
    }

    fn imrt(&mut self) -> &mut Imrt {
        self.imrt
            .as_mut()
            .expect("the reference table is allocated first")
    }

    /// Whether a repair signalled corruption, which leaves QEMU's image
    /// unusable ([`CheckReport::image_unusable`]).
    fn image_unusable(&self) -> bool {
        self.signaled_corruption && self.fix != Repair::None
    }

    /// Makes repaired refcounts durable, then discards the clusters they
    /// freed (QEMU discards freed clusters during a repair). On an image
    /// made unusable they stay in the cache, as in QEMU's, which no longer
    /// writes it at close.
    fn flush_refcounts(&mut self) -> Result<()> {
        if self.image_unusable() {
            return Ok(());
        }
        self.empty_refcount_cache()
    }

    /// Writes the refcount cache whatever state the image is in (QEMU's
    /// qcow2_cache_empty at the start of a rebuild), then discards.
    fn empty_refcount_cache(&mut self) -> Result<()> {
        if self.stored.write_back(self.storage)? {
            self.storage.flush()?;
        }
        for cluster in std::mem::take(&mut self.discards) {
            self.storage
                .discard(cluster << self.cluster_bits, self.cluster_size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
