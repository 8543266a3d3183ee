//! The announce state of VIRTIO_NET_F_GUEST_ANNOUNCE (virtio 1.2,
//! 5.1.6.5.4): after a restore or a migration the device sets
//! `VIRTIO_NET_S_ANNOUNCE` in its configuration `status` and raises a
//! configuration interrupt; the driver sends gratuitous ARPs (so that
//! switches and neighbours learn where the guest now is) and acks with
//! VIRTIO_NET_CTRL_ANNOUNCE_ACK on the control queue, which clears the
//! bit. Shared between the device (configuration reads, on a vCPU
//! thread) and its control queue (the device thread).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Whether an announcement is pending, and the configuration generation
/// its changes bump.
#[derive(Debug, Default)]
pub struct AnnounceState {
    pending: AtomicBool,
    generation: AtomicU32,
}

impl AnnounceState {
    /// Ask the driver to announce itself (the bit turns on).
    pub fn request(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The driver acked: clear the bit. False when no announcement was
    /// pending (the command is then refused, as QEMU refuses it).
    pub fn acknowledge(&self) -> bool {
        let was = self.pending.swap(false, Ordering::SeqCst);
        if was {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        was
    }

    /// Whether `VIRTIO_NET_S_ANNOUNCE` is set.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The configuration generation (bumped by every change of the bit).
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A device reset: nothing pending.
    pub fn clear(&self) {
        if self.pending.swap(false, Ordering::SeqCst) {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_clears_a_pending_announcement_once() {
        let state = AnnounceState::default();
        assert!(!state.acknowledge(), "nothing pending");
        let before = state.generation();
        state.request();
        assert!(state.pending());
        assert_ne!(state.generation(), before);
        assert!(state.acknowledge());
        assert!(!state.pending());
        assert!(!state.acknowledge(), "acked twice");
        state.request();
        state.clear();
        assert!(!state.pending());
    }
}
