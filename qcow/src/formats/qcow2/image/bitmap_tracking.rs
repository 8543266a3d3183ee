//! The persistent bitmaps of an image open for writing, as QEMU keeps
//! them: every guest write, zeroing and discard marks its range dirty in
//! each enabled bitmap, in memory, and close stores the bitmaps anew.

use std::sync::atomic::Ordering;

use super::Qcow2;
use crate::bitmap::{Bitmaps, Tracking};
use crate::error::Result;

impl Qcow2 {
    /// Marks `len` guest bytes at `offset` dirty in every enabled bitmap.
    pub(super) fn mark_bitmaps_dirty(&self, offset: u64, len: u64) {
        if !self.tracks_bitmaps.load(Ordering::Relaxed) {
            return;
        }
        let mut tracking = self.bitmaps.lock().expect("bitmap lock poisoned");
        if let Some(t) = tracking.as_mut() {
            t.mark(offset, len);
        }
    }

    /// Hands over the bitmaps tracked since open, ending their tracking
    /// (for [`Bitmaps::load`], which stores them): writes after this are
    /// no longer marked.
    pub fn take_bitmap_tracking(&self) -> Option<Tracking> {
        self.tracks_bitmaps.store(false, Ordering::Relaxed);
        self.bitmaps.lock().expect("bitmap lock poisoned").take()
    }

    /// Stores the bitmaps tracked since open, with the writes marked, as
    /// QEMU stores them on close. Nothing when none are tracked.
    pub(super) fn store_tracked_bitmaps(&self) -> Result<()> {
        let Some(tracking) = self.take_bitmap_tracking() else {
            return Ok(());
        };
        Bitmaps::from_tracking(self, tracking).store()
    }
}
