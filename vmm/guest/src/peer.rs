//! `guest.peer=A.B.C.D` in `guest.mode=net`: the guest reaches another
//! guest itself. Every 100 ms until it is answered it asks for the
//! peer's MAC (ARP request), then sends a UDP datagram from port
//! [`PROBE_PORT`] to the peer's echo port; the echo coming back prints
//! `guest: peer reached A.B.C.D` once. Meanwhile the guest keeps
//! answering as `net` does (so two such guests reach each other).

use crate::arch;
use crate::cmdline;
use crate::console::{put_dec, put_str};
use crate::disk::Failure;
use crate::net::{checksum, parse_ip};

/// The UDP port probes come from (and their echoes go to).
pub const PROBE_PORT: u16 = 40000;
/// Timer ticks (10 ms) between probes.
const PROBE_INTERVAL_TICKS: u64 = 10;

/// The peer and how far the guest got with it.
pub struct Peer {
    ip: [u8; 4],
    mac: Option<[u8; 6]>,
    reached: bool,
    next_tick: u64,
}

impl Peer {
    /// The peer of `guest.peer=`, if given.
    pub fn from_cmdline(cmdline: &[u8]) -> Result<Option<Peer>, Failure> {
        match cmdline::value(cmdline, b"guest.peer=") {
            None => Ok(None),
            Some(text) => {
                let ip = parse_ip(text)
                    .ok_or(Failure::Other("bad guest.peer=, length", text.len() as u64))?;
                Ok(Some(Peer {
                    ip,
                    mac: None,
                    reached: false,
                    next_tick: 0,
                }))
            }
        }
    }

    /// Whether the peer has not answered yet.
    pub fn pending(&self) -> bool {
        !self.reached
    }

    /// The probe due now, written into `out` (a frame without the vnet
    /// header); its length.
    pub fn probe(&mut self, mac: [u8; 6], ip: [u8; 4], out: &mut [u8]) -> Option<usize> {
        if self.reached || arch::ticks() < self.next_tick || out.len() < 64 {
            return None;
        }
        self.next_tick = arch::ticks() + PROBE_INTERVAL_TICKS;
        match self.mac {
            None => {
                out[0..6].fill(0xff);
                out[6..12].copy_from_slice(&mac);
                out[12..14].copy_from_slice(&[0x08, 0x06]);
                out[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                out[22..28].copy_from_slice(&mac);
                out[28..32].copy_from_slice(&ip);
                out[32..38].fill(0);
                out[38..42].copy_from_slice(&self.ip);
                Some(42)
            }
            Some(peer_mac) => {
                let payload = b"peer";
                let ip_len = 20 + 8 + payload.len();
                out[0..6].copy_from_slice(&peer_mac);
                out[6..12].copy_from_slice(&mac);
                out[12..14].copy_from_slice(&[0x08, 0x00]);
                let ip_header = &mut out[14..34];
                ip_header.copy_from_slice(&[
                    0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]);
                ip_header[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                ip_header[12..16].copy_from_slice(&ip);
                ip_header[16..20].copy_from_slice(&self.ip);
                let sum = checksum(ip_header);
                ip_header[10..12].copy_from_slice(&sum.to_be_bytes());
                out[34..36].copy_from_slice(&PROBE_PORT.to_be_bytes());
                out[36..38].copy_from_slice(&7u16.to_be_bytes());
                out[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                out[40..42].fill(0);
                out[42..42 + payload.len()].copy_from_slice(payload);
                Some(14 + ip_len)
            }
        }
    }

    /// Looks at a received frame: the peer's ARP reply or the echo of a
    /// probe. Whether the frame was one of those (nothing else to do).
    pub fn observe(&mut self, frame: &[u8]) -> bool {
        if frame.len() >= 42
            && frame[12..14] == [0x08, 0x06]
            && frame[20..22] == [0, 2]
            && frame[28..32] == self.ip
        {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[22..28]);
            self.mac = Some(mac);
            self.next_tick = 0;
            return true;
        }
        let is_echo = frame.len() >= 42
            && frame[12..14] == [0x08, 0x00]
            && frame[23] == 17
            && frame[26..30] == self.ip
            && usize::from(frame[14] & 15) == 5
            && frame[36..38] == PROBE_PORT.to_be_bytes();
        if is_echo && !self.reached {
            self.reached = true;
            put_str("guest: peer reached ");
            for (i, byte) in self.ip.iter().enumerate() {
                if i > 0 {
                    put_str(".");
                }
                put_dec(u64::from(*byte));
            }
            put_str("\n");
        }
        is_echo
    }
}
