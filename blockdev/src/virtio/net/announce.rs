//! The announce state of VIRTIO_NET_F_GUEST_ANNOUNCE (virtio 1.2,
//! 5.1.6.5.4): after a restore or a migration the device sets
//! `VIRTIO_NET_S_ANNOUNCE` in its configuration `status` and raises a
//! configuration interrupt; the driver sends gratuitous ARPs (so that
//! switches and neighbours learn where the guest now is) and acks with
//! VIRTIO_NET_CTRL_ANNOUNCE_ACK on the control queue, which clears the
//! bit. Shared between the device (configuration reads, on a vCPU
//! thread) and its control queue (the device thread).
//!
//! Whatever the driver took, the device itself also sends a RARP from the
//! guest's MAC into the tap, as QEMU's `qemu_announce_self` does for every
//! NIC ([`rarp_frame`]): a bridge or switch learns the MAC's new port even
//! from a guest that cannot announce itself.

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

/// Bytes of the RARP frame (the Ethernet minimum, padded).
pub const RARP_FRAME_LEN: usize = 60;

/// QEMU's self-announcement from `mac` (`announce_self_create`): a
/// broadcast RARP "request reverse" (ethertype 0x8035, opcode 3) whose
/// sender and target hardware address are `mac` and protocol addresses
/// zero, padded to 60 bytes.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; RARP_FRAME_LEN] {
    let mut frame = [0u8; RARP_FRAME_LEN];
    frame[0..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op 3.
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 3]);
    frame[22..28].copy_from_slice(&mac);
    frame[32..38].copy_from_slice(&mac);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rarp_frame_is_qemus() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let frame = rarp_frame(mac);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[0x80, 0x35]);
        assert_eq!(&frame[20..22], &[0, 3]);
        assert_eq!((&frame[22..28], &frame[32..38]), (&mac[..], &mac[..]));
        assert!(frame[28..32].iter().chain(&frame[38..]).all(|&b| b == 0));
    }

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
