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
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Rounds of an announcement (QEMU's `announce-rounds` default).
pub const ANNOUNCE_ROUNDS: u8 = 5;
/// Delay before the second round (QEMU's `announce-initial`, 50 ms).
const ANNOUNCE_INITIAL: Duration = Duration::from_millis(50);
/// Each later round waits this much longer (`announce-step`, 100 ms).
const ANNOUNCE_STEP: Duration = Duration::from_millis(100);
/// No wait between rounds is longer (`announce-max`, 550 ms).
const ANNOUNCE_MAX: Duration = Duration::from_millis(550);

/// The wait before the next round when `rounds_left` remain, as QEMU's
/// `qemu_announce_timer_step`: initial + (rounds - left - 1) × step, at
/// most max (50, 150, 250, 350 ms).
pub fn round_delay(rounds_left: u8) -> Duration {
    let done = u32::from(
        ANNOUNCE_ROUNDS
            .saturating_sub(rounds_left)
            .saturating_sub(1),
    );
    (ANNOUNCE_INITIAL + ANNOUNCE_STEP * done).min(ANNOUNCE_MAX)
}

/// An announcement as a snapshot records it: whether
/// `VIRTIO_NET_S_ANNOUNCE` was set and how many rounds were left. The
/// default (nothing pending, no rounds) is what a record without it
/// means; a restore then announces from scratch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedAnnounce {
    /// The bit was set (the driver had not acked).
    pub pending: bool,
    /// Rounds still to come (0 to [`ANNOUNCE_ROUNDS`]).
    pub rounds_left: u8,
}

impl SavedAnnounce {
    /// Whether an announcement was under way.
    pub fn in_progress(&self) -> bool {
        self.pending || self.rounds_left > 0
    }
}

/// When the next round is due and how many remain.
#[derive(Debug, Default)]
struct Rounds {
    left: u8,
    due: Option<Instant>,
}

/// Whether an announcement is pending, the configuration generation its
/// changes bump, and the rounds still to come (QEMU's virtio-net
/// announce timer: a round sets the bit; the driver's ack schedules the
/// next one after [`round_delay`]).
#[derive(Debug, Default)]
pub struct AnnounceState {
    pending: AtomicBool,
    generation: AtomicU32,
    rounds: Mutex<Rounds>,
}

impl AnnounceState {
    fn rounds(&self) -> std::sync::MutexGuard<'_, Rounds> {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the driver to announce itself (the bit turns on).
    pub fn request(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Start [`ANNOUNCE_ROUNDS`] rounds, the first due at `now`.
    pub fn start(&self, now: Instant) {
        *self.rounds() = Rounds {
            left: ANNOUNCE_ROUNDS,
            due: Some(now),
        };
    }

    /// Go on with a restored announcement at `now`: the bit as it was
    /// (the driver acks it, which schedules the next round), or if it
    /// had been acked the next round due now. False when `saved` was not
    /// under way (then nothing changes).
    pub fn resume(&self, saved: SavedAnnounce, now: Instant) -> bool {
        if !saved.in_progress() {
            return false;
        }
        let left = saved.rounds_left.min(ANNOUNCE_ROUNDS);
        if saved.pending {
            if !self.pending() {
                self.request();
            }
            *self.rounds() = Rounds { left, due: None };
        } else {
            *self.rounds() = Rounds {
                left,
                due: Some(now),
            };
        }
        true
    }

    /// A round due by `now` fires: one fewer left, the bit turns on.
    /// True when it did (the transport raises a configuration interrupt).
    pub fn tick(&self, now: Instant) -> bool {
        let mut rounds = self.rounds();
        match rounds.due {
            Some(due) if due <= now && rounds.left > 0 => {
                rounds.due = None;
                rounds.left -= 1;
                drop(rounds);
                self.request();
                true
            }
            _ => false,
        }
    }

    /// When the next round is due; `Some(None)` when rounds remain but
    /// wait on the driver's ack; `None` when none remain.
    pub fn next_due(&self) -> Option<Option<Instant>> {
        let rounds = self.rounds();
        (rounds.left > 0).then_some(rounds.due)
    }

    /// The driver acked: clear the bit and, if rounds remain, schedule
    /// the next one. False when no announcement was pending (the command
    /// is then refused, as QEMU refuses it).
    pub fn acknowledge(&self) -> bool {
        let was = self.pending.swap(false, Ordering::SeqCst);
        if was {
            self.generation.fetch_add(1, Ordering::SeqCst);
            let mut rounds = self.rounds();
            if rounds.left > 0 {
                rounds.due = Some(Instant::now() + round_delay(rounds.left));
            }
        }
        was
    }

    /// Whether `VIRTIO_NET_S_ANNOUNCE` is set.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The bit and the rounds left, for a snapshot.
    pub fn saved(&self) -> SavedAnnounce {
        SavedAnnounce {
            pending: self.pending(),
            rounds_left: self.rounds().left,
        }
    }

    /// The configuration generation (bumped by every change of the bit).
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The VM was paused for `by`: the next round comes that much later
    /// (QEMU's announce timer runs on the virtual clock, which stops
    /// while the VM is stopped).
    pub fn postpone(&self, by: Duration) {
        if let Some(due) = self.rounds().due.as_mut() {
            *due += by;
        }
    }

    /// A device reset: nothing pending, no rounds left.
    pub fn clear(&self) {
        *self.rounds() = Rounds::default();
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

    #[test]
    fn rounds_follow_qemus_timer_and_each_ack_schedules_the_next() {
        let delays: Vec<u64> = (1..ANNOUNCE_ROUNDS)
            .rev()
            .map(|left| round_delay(left).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 150, 250, 350]);
        let state = AnnounceState::default();
        let now = Instant::now();
        state.start(now);
        let mut fired = 0;
        for _ in 0..2 * ANNOUNCE_ROUNDS {
            // Without an ack no further round comes.
            let far = Instant::now() + Duration::from_secs(10);
            if state.tick(far) {
                fired += 1;
                assert!(!state.tick(far), "a round waits for the ack");
                assert_eq!(state.next_due().is_some(), fired < ANNOUNCE_ROUNDS);
                assert!(state.acknowledge());
            }
        }
        assert_eq!(fired, ANNOUNCE_ROUNDS);
        assert_eq!(state.next_due(), None);
        assert_eq!(state.saved(), SavedAnnounce::default());
    }

    #[test]
    fn a_pause_postpones_the_next_round_by_its_length() {
        let state = AnnounceState::default();
        let now = Instant::now();
        state.postpone(Duration::from_secs(1));
        assert_eq!(state.next_due(), None, "nothing to postpone");
        state.start(now);
        state.postpone(Duration::from_secs(2));
        assert!(!state.tick(now + Duration::from_millis(1999)));
        assert!(state.tick(now + Duration::from_secs(2)));
        // Waiting for the ack: no round is due, none is made due.
        state.postpone(Duration::from_secs(1));
        assert_eq!(state.next_due(), Some(None));
    }

    #[test]
    fn a_restored_announcement_goes_on_where_it_was() {
        let state = AnnounceState::default();
        let now = Instant::now();
        assert!(!state.resume(SavedAnnounce::default(), now));
        let saved = SavedAnnounce {
            pending: true,
            rounds_left: 2,
        };
        assert!(state.resume(saved, now));
        assert!(state.pending());
        assert_eq!(state.saved(), saved);
        assert!(!state.tick(now), "the bit waits for the ack");
        assert!(state.acknowledge());
        let later = now + Duration::from_secs(1);
        assert!(state.tick(later));
        assert!(state.acknowledge());
        assert!(state.tick(later + Duration::from_secs(1)));
        assert_eq!(state.next_due(), None, "two rounds, not five");
        // Acked before the snapshot: the next round comes at once.
        let acked = AnnounceState::default();
        acked.resume(
            SavedAnnounce {
                pending: false,
                rounds_left: 1,
            },
            now,
        );
        assert!(!acked.pending());
        assert!(acked.tick(now));
    }
}
