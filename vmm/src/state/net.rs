//! A virtio-net device's record: what the device holds beyond its
//! virtio-mmio transport (whose registers and queues are the transport's
//! own record). The tap is not state: a restored VM, or a migration's
//! destination, opens its own tap from its configuration.
//!
//! ```text
//! mac           6 bytes
//! max_pairs     u16 LE   the device's queue pairs (the configuration's)
//! active_pairs  u16 LE   pairs the guest set with VQ_PAIRS_SET (1 to max)
//! rx_queues     u16 LE   receive queues with a stash (at most max_pairs)
//! per receive queue:
//!   count       u16 LE   chains stashed (at most the largest queue size)
//!   heads       count × u16 LE, oldest first
//! announce (optional: a record without it has no announcement under way)
//!   pending     u8       VIRTIO_NET_S_ANNOUNCE was set (0 or 1)
//!   rounds_left u8       announce rounds still to come (0 to 5)
//! ```
//!
//! Every count is bounded before it sizes anything; a head repeated in one
//! queue is refused here, a head beyond the queue's size when the device
//! takes the state.

use blockdev::virtio::net::announce::{SavedAnnounce, ANNOUNCE_ROUNDS};
use blockdev::virtio::net::defs::{MAX_QUEUE_PAIRS, QUEUE_MAX_SIZE};
pub use blockdev::virtio::net::NetResume;

use super::record::{Payload, Record, RecordKind};
use super::StateError;

/// One virtio-net device's state beyond its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDeviceState {
    /// The guest's MAC address (the guest's driver has read it).
    pub mac: [u8; 6],
    /// The device's queue pairs.
    pub max_pairs: u16,
    /// What the device hands a restored device of the same shape.
    pub resume: NetResume,
}

fn bad(reason: String) -> StateError {
    StateError::BadPayload {
        kind: RecordKind::VirtioNet as u16,
        reason,
    }
}

impl NetDeviceState {
    /// This state as the record of interface `index`.
    pub fn to_record(&self, index: u32) -> Record {
        let mut b = self.mac.to_vec();
        b.extend_from_slice(&self.max_pairs.to_le_bytes());
        b.extend_from_slice(&self.resume.active_pairs.to_le_bytes());
        b.extend_from_slice(&(self.resume.rx_stash.len() as u16).to_le_bytes());
        for heads in &self.resume.rx_stash {
            b.extend_from_slice(&(heads.len() as u16).to_le_bytes());
            for head in heads {
                b.extend_from_slice(&head.to_le_bytes());
            }
        }
        let announce = self.resume.announce;
        b.push(u8::from(announce.pending));
        b.push(announce.rounds_left);
        Record {
            kind: RecordKind::VirtioNet,
            index,
            payload: b,
        }
    }

    /// The state in `record`, every count bounded.
    pub fn from_record(record: &Record) -> Result<Self, StateError> {
        let mut p = Payload::new(record);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(p.take(6)?);
        if mac[0] & 1 != 0 {
            return Err(bad(format!(
                "MAC address {} is a multicast address",
                crate::net_config::MacAddress(mac)
            )));
        }
        let max_pairs = p.u16()?;
        if max_pairs == 0 || max_pairs > MAX_QUEUE_PAIRS {
            return Err(bad(format!(
                "{max_pairs} queue pairs, 1 to {MAX_QUEUE_PAIRS} expected"
            )));
        }
        let active_pairs = p.u16()?;
        if active_pairs == 0 || active_pairs > max_pairs {
            return Err(bad(format!(
                "{active_pairs} queue pairs in use of {max_pairs}"
            )));
        }
        let queues = p.u16()?;
        if queues > max_pairs {
            return Err(bad(format!(
                "{queues} receive queues of {max_pairs} queue pairs"
            )));
        }
        let mut rx_stash = Vec::with_capacity(usize::from(queues));
        for queue in 0..queues {
            let count = p.u16()?;
            if count > QUEUE_MAX_SIZE {
                return Err(bad(format!(
                    "{count} receive chains stashed in queue {}, at most {QUEUE_MAX_SIZE}",
                    2 * queue
                )));
            }
            let mut heads = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let head = p.u16()?;
                if heads.contains(&head) {
                    return Err(bad(format!(
                        "receive chain {head} stashed twice in queue {}",
                        2 * queue
                    )));
                }
                heads.push(head);
            }
            rx_stash.push(heads);
        }
        let announce = match p.rest() {
            [] => SavedAnnounce::default(),
            &[pending @ (0 | 1), rounds_left] if rounds_left <= ANNOUNCE_ROUNDS => SavedAnnounce {
                pending: pending == 1,
                rounds_left,
            },
            &[pending, rounds_left] => {
                return Err(bad(format!(
                    "announce state pending {pending}, {rounds_left} rounds left: 0 or 1 and 0 to {ANNOUNCE_ROUNDS} expected"
                )))
            }
            rest => {
                return Err(bad(format!(
                    "{} bytes after the receive queues, 0 or 2 expected",
                    rest.len()
                )))
            }
        };
        Ok(NetDeviceState {
            mac,
            max_pairs,
            resume: NetResume {
                active_pairs,
                rx_stash,
                announce,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NetDeviceState {
        NetDeviceState {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            max_pairs: 2,
            resume: NetResume {
                active_pairs: 2,
                rx_stash: vec![vec![3, 4, 5], vec![]],
                announce: SavedAnnounce {
                    pending: true,
                    rounds_left: 3,
                },
            },
        }
    }

    #[test]
    fn net_record_round_trips() {
        let s = state();
        assert_eq!(NetDeviceState::from_record(&s.to_record(1)).unwrap(), s);
    }

    #[test]
    fn net_record_refuses_bad_fields() {
        let cases: [(usize, &[u8], &str); 6] = [
            (0, &[0x01], "multicast"),
            (6, &[0, 0], "0 queue pairs"),
            (6, &[17, 0], "17 queue pairs"),
            (8, &[3, 0], "3 queue pairs in use of 2"),
            (10, &[3, 0], "3 receive queues"),
            (12, &[0xff, 0xff], "65535 receive chains"),
        ];
        for (at, bytes, says) in cases {
            let mut record = state().to_record(0);
            record.payload[at..at + bytes.len()].copy_from_slice(bytes);
            let err = NetDeviceState::from_record(&record)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
            assert!(!err.contains('\n'));
        }
        let mut twice = state().to_record(0);
        twice.payload[16..18].copy_from_slice(&3u16.to_le_bytes());
        let err = NetDeviceState::from_record(&twice).unwrap_err().to_string();
        assert!(err.contains("stashed twice"), "{err}");
        let mut short = state().to_record(0);
        short.payload.pop();
        assert!(NetDeviceState::from_record(&short).is_err());
        let announce_at = state().to_record(0).payload.len() - 2;
        for (bytes, says) in [([2u8, 0u8], "pending 2"), ([0, 6], "6 rounds left")] {
            let mut record = state().to_record(0);
            record.payload[announce_at..].copy_from_slice(&bytes);
            let err = NetDeviceState::from_record(&record)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
        let mut long = state().to_record(0);
        long.payload.push(0);
        let err = NetDeviceState::from_record(&long).unwrap_err().to_string();
        assert!(err.contains("3 bytes after"), "{err}");
    }

    #[test]
    fn a_record_without_the_announce_state_still_loads() {
        let mut record = state().to_record(0);
        record.payload.truncate(record.payload.len() - 2);
        let old = NetDeviceState::from_record(&record).expect("old record");
        assert_eq!(old.resume.announce, SavedAnnounce::default());
        assert_eq!(old.resume.rx_stash, state().resume.rx_stash);
    }
}
