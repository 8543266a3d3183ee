//! Corruption found while an image is in use (QEMU's
//! qcow2_signal_corruption): the operation fails with EIO and an image
//! open for writing gets the corrupt bit, so that no later writer trusts
//! its metadata until `check -r all` has repaired it. From then on the
//! open image is unusable, as QEMU's is: nothing more is written at
//! flush or close.
//!
//! Operations that succeed may still have something to report, as QEMU
//! prints it on stderr and goes on: a non-fatal corruption event (a data
//! cluster at an unaligned offset leaked rather than freed) or a refcount
//! decrement that failed. They are kept as typed [`Notice`]s for the
//! caller to take ([`Qcow2::take_notices`]); nothing is printed here.

use std::sync::atomic::Ordering;

use byteorder::{BigEndian, ByteOrder};

use super::Qcow2;
use crate::error::Error;
use crate::header::INCOMPAT_CORRUPT;
use crate::refcount::FreeFailure;

/// Something an operation that succeeded reports, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A non-fatal corruption event (QEMU's `qcow2: Image is corrupt:`),
    /// in QEMU's words; only the image's first event is reported.
    Corruption {
        /// What was found.
        event: String,
    },
    /// A host cluster whose refcount could not be decremented, leaked
    /// (QEMU's qcow2_free_clusters failure).
    FreeFailed {
        /// Host byte offset of the cluster.
        cluster_offset: u64,
        /// Why.
        reason: FreeFailure,
    },
}

impl Notice {
    /// The line QEMU prints on stderr for it.
    pub fn line(&self) -> String {
        match self {
            Notice::Corruption { event } => format!(
                "qcow2: Image is corrupt: {event}; further non-fatal corruption events will be \
                 suppressed"
            ),
            Notice::FreeFailed { reason, .. } => {
                format!("qcow2_free_clusters failed: {}", reason.strerror())
            }
        }
    }
}

/// The notices of an open image not yet taken, and whether a corruption
/// event was reported (QEMU's `signaled_corruption`: later non-fatal
/// events are suppressed).
#[derive(Debug, Default)]
pub(super) struct Notices {
    list: Vec<Notice>,
    event_signaled: bool,
}

/// Byte offset of the incompatible features field in a version 3 header.
const INCOMPATIBLE_FEATURES_OFFSET: u64 = 72;

impl Qcow2 {
    /// Turns a [`Error::CorruptionFound`] raised below this image (or
    /// here) into QEMU's signal: on a writable image the corrupt bit is
    /// written (once) and the image stops writing. Other errors pass.
    pub(super) fn signal_corruption(&self, error: Error) -> Error {
        let Error::CorruptionFound { event, during, .. } = error else {
            return error;
        };
        self.notices_lock().event_signaled = true;
        if self.writable && !self.corruption_signaled.swap(true, Ordering::SeqCst) {
            // As qcow2_mark_corrupt, whose failure QEMU ignores too; a
            // version 2 header has no feature fields to mark.
            let _ = self.write_corrupt_bit();
        }
        Error::CorruptionFound {
            event,
            marked: self.writable,
            during,
        }
    }

    /// A [`Error::CorruptionFound`] for `event`, signalled.
    pub(super) fn corruption(&self, event: String) -> Error {
        self.signal_corruption(Error::CorruptionFound {
            event,
            marked: false,
            during: None,
        })
    }

    /// Whether corruption was signalled on this writable image, which
    /// then writes nothing more (QEMU sets its driver to NULL).
    pub(super) fn is_dead(&self) -> bool {
        self.corruption_signaled.load(Ordering::SeqCst)
    }

    /// Reports a non-fatal corruption event from an operation that goes
    /// on (QEMU's `qcow2_signal_corruption(bs, false, ...)`): kept as a
    /// [`Notice`] unless an event was reported before.
    pub(super) fn non_fatal_corruption(&self, event: String) {
        let mut notices = self.notices_lock();
        if !std::mem::replace(&mut notices.event_signaled, true) {
            notices.list.push(Notice::Corruption { event });
        }
    }

    /// Takes what operations that succeeded reported since the last call,
    /// oldest first, each to be printed as [`Notice::line`] says. Refcount
    /// decrements are applied when metadata is flushed, so their failures
    /// show after a flush.
    pub fn take_notices(&self) -> Vec<Notice> {
        let failed = self.lock().rc.take_failed_frees();
        let mut notices = self.notices_lock();
        let cs = self.geo.cluster_size();
        notices.list.extend(
            failed
                .into_iter()
                .map(|(cluster, reason)| Notice::FreeFailed {
                    cluster_offset: cluster * cs,
                    reason,
                }),
        );
        std::mem::take(&mut notices.list)
    }

    fn notices_lock(&self) -> std::sync::MutexGuard<'_, Notices> {
        self.notices.lock().expect("notices lock poisoned")
    }

    fn write_corrupt_bit(&self) -> crate::error::Result<()> {
        if self.geo.version < 3 {
            return Ok(());
        }
        // The field on disk, not the cached header: callers may hold the
        // metadata lock, and nothing writes the header after this.
        let mut raw = [0u8; 8];
        self.file.read_at(&mut raw, INCOMPATIBLE_FEATURES_OFFSET)?;
        let features = BigEndian::read_u64(&raw) | INCOMPAT_CORRUPT;
        BigEndian::write_u64(&mut raw, features);
        self.file.write_at(&raw, INCOMPATIBLE_FEATURES_OFFSET)?;
        self.file.flush()
    }
}
