//! Corruption found while an image is in use (QEMU's
//! qcow2_signal_corruption): the operation fails with EIO and an image
//! open for writing gets the corrupt bit, so that no later writer trusts
//! its metadata until `check -r all` has repaired it. From then on the
//! open image is unusable, as QEMU's is: nothing more is written at
//! flush or close.

use std::sync::atomic::Ordering;

use byteorder::{BigEndian, ByteOrder};

use super::Qcow2;
use crate::error::Error;
use crate::header::INCOMPAT_CORRUPT;

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
