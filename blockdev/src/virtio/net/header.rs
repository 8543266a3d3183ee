//! The `virtio_net_hdr_v1` in front of each frame the guest sends, and its
//! validation against the negotiated features and the frame's length.
//! Everything here is plain data: the transmit path copies the header out
//! of guest memory once, checks it here, and hands the kernel that copy.

use super::defs::*;

/// A vnet header as the guest wrote it (little-endian fields decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHeader {
    /// NEEDS_CSUM / DATA_VALID.
    pub flags: u8,
    /// GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, possibly with GSO_ECN.
    pub gso_type: u8,
    /// Bytes of the headers before the payload (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// Chains of a merged rx frame (ignored on tx).
    pub num_buffers: u16,
}

/// Why a transmitted frame's header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A flag other than NEEDS_CSUM.
    UnknownFlags(u8),
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated.
    ChecksumNotNegotiated,
    /// The checksum field would lie past the frame.
    ChecksumPastFrame {
        /// `csum_start + csum_offset + 2`.
        end: u32,
        /// Frame length.
        frame: usize,
    },
    /// A GSO type this device does not know or did not negotiate.
    GsoType(u8),
    /// A GSO frame without NEEDS_CSUM (the kernel needs the checksum
    /// position to segment).
    GsoWithoutChecksum,
    /// `gso_size` zero, or 0xffff (the kernel's GSO_BY_FRAGS, never a
    /// segment size).
    GsoSize {
        /// The header's gso_size.
        gso_size: u16,
        /// Frame length.
        frame: usize,
    },
    /// `hdr_len` past the frame.
    HeaderLength {
        /// The header's hdr_len.
        hdr_len: u16,
        /// Frame length.
        frame: usize,
    },
    /// The frame is shorter than an Ethernet header or longer than
    /// [`MAX_FRAME`] (or a non-GSO frame longer than one packet can be).
    FrameLength(usize),
}

/// The kernel's marker gso_size (GSO_BY_FRAGS): not a size.
const GSO_BY_FRAGS: u16 = 0xffff;

/// Longest frame that is not GSO: a 64 KiB IP packet in an Ethernet
/// frame with a VLAN tag (the tap may have a large MTU).
const MAX_PLAIN_FRAME: usize = MAX_FRAME;

impl NetHeader {
    /// Decode the 12 header bytes.
    pub fn from_bytes(raw: &[u8; NET_HDR_SIZE]) -> Self {
        let le = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        NetHeader {
            flags: raw[0],
            gso_type: raw[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// Encode into 12 bytes.
    pub fn to_bytes(self) -> [u8; NET_HDR_SIZE] {
        let mut raw = [0u8; NET_HDR_SIZE];
        raw[0] = self.flags;
        raw[1] = self.gso_type;
        raw[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        raw[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        raw[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        raw[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        raw[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        raw
    }

    /// Check a header the guest sent with a frame of `frame` bytes, under
    /// the negotiated `features`. The header passed on to the tap is the
    /// checked copy with `num_buffers` zeroed.
    pub fn validate_tx(self, frame: usize, features: u64) -> Result<NetHeader, HeaderError> {
        if !(ETH_HEADER..=MAX_FRAME).contains(&frame) {
            return Err(HeaderError::FrameLength(frame));
        }
        if self.flags & !HDR_F_NEEDS_CSUM != 0 {
            return Err(HeaderError::UnknownFlags(self.flags));
        }
        let needs_csum = self.flags & HDR_F_NEEDS_CSUM != 0;
        if needs_csum {
            if features & F_NET_CSUM == 0 {
                return Err(HeaderError::ChecksumNotNegotiated);
            }
            let end = u32::from(self.csum_start) + u32::from(self.csum_offset) + 2;
            if end as usize > frame {
                return Err(HeaderError::ChecksumPastFrame { end, frame });
            }
        }
        let base_type = self.gso_type & !GSO_ECN;
        let needed = match base_type {
            GSO_NONE if self.gso_type == GSO_NONE => None,
            GSO_TCPV4 => Some(F_NET_HOST_TSO4),
            GSO_TCPV6 => Some(F_NET_HOST_TSO6),
            GSO_UDP if self.gso_type == GSO_UDP => Some(F_NET_HOST_UFO),
            // ECN on a non-TCP type, ECN without HOST_ECN (not offered),
            // or an unknown type.
            _ => return Err(HeaderError::GsoType(self.gso_type)),
        };
        match needed {
            None => {
                if frame > MAX_PLAIN_FRAME {
                    return Err(HeaderError::FrameLength(frame));
                }
            }
            Some(feature) => {
                if features & feature == 0 || self.gso_type & GSO_ECN != 0 {
                    return Err(HeaderError::GsoType(self.gso_type));
                }
                if !needs_csum {
                    return Err(HeaderError::GsoWithoutChecksum);
                }
                // A gso_size at least the payload is allowed: the kernel
                // sends such a frame as it is (a single segment).
                if self.gso_size == 0 || self.gso_size == GSO_BY_FRAGS {
                    return Err(HeaderError::GsoSize {
                        gso_size: self.gso_size,
                        frame,
                    });
                }
            }
        }
        if usize::from(self.hdr_len) > frame {
            return Err(HeaderError::HeaderLength {
                hdr_len: self.hdr_len,
                frame,
            });
        }
        Ok(NetHeader {
            num_buffers: 0,
            ..self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = OFFERED_FEATURES;

    fn tso4(gso_size: u16) -> NetHeader {
        NetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 7,
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let header = tso4(1448);
        assert_eq!(NetHeader::from_bytes(&header.to_bytes()), header);
    }

    #[test]
    fn plain_and_gso_frames_pass_and_lose_num_buffers() {
        let plain = NetHeader::default().validate_tx(60, ALL).expect("plain");
        assert_eq!(plain, NetHeader::default());
        let checked = tso4(1448).validate_tx(10_000, ALL).expect("tso");
        assert_eq!(checked.num_buffers, 0);
        assert_eq!(checked.gso_size, 1448);
    }

    #[test]
    fn absurd_headers_are_refused() {
        assert_eq!(
            tso4(0).validate_tx(10_000, ALL),
            Err(HeaderError::GsoSize {
                gso_size: 0,
                frame: 10_000
            })
        );
        assert!(matches!(
            tso4(u16::MAX).validate_tx(1000, ALL),
            Err(HeaderError::GsoSize { .. })
        ));
        // One segment's worth or less: sent as it is.
        assert!(tso4(1448).validate_tx(200, ALL).is_ok());
        let mut past = tso4(1448);
        past.csum_start = 9990;
        assert!(matches!(
            past.validate_tx(10_000, ALL),
            Err(HeaderError::ChecksumPastFrame { end: 10_008, .. })
        ));
        past.csum_start = u16::MAX;
        past.csum_offset = u16::MAX;
        assert!(matches!(
            past.validate_tx(MAX_FRAME, ALL),
            Err(HeaderError::ChecksumPastFrame { .. })
        ));
        let mut bad_type = tso4(1448);
        bad_type.gso_type = 2;
        assert_eq!(
            bad_type.validate_tx(10_000, ALL),
            Err(HeaderError::GsoType(2))
        );
        bad_type.gso_type = GSO_TCPV4 | GSO_ECN;
        assert!(bad_type.validate_tx(10_000, ALL).is_err());
        bad_type.gso_type = GSO_UDP | GSO_ECN;
        assert!(bad_type.validate_tx(10_000, ALL).is_err());
        let mut no_csum = tso4(1448);
        no_csum.flags = 0;
        assert_eq!(
            no_csum.validate_tx(10_000, ALL),
            Err(HeaderError::GsoWithoutChecksum)
        );
        let flags = NetHeader {
            flags: HDR_F_DATA_VALID,
            ..NetHeader::default()
        };
        assert_eq!(
            flags.validate_tx(60, ALL),
            Err(HeaderError::UnknownFlags(HDR_F_DATA_VALID))
        );
        let mut hdr_len = tso4(1448);
        hdr_len.hdr_len = 20_000;
        assert!(matches!(
            hdr_len.validate_tx(10_000, ALL),
            Err(HeaderError::HeaderLength { .. })
        ));
        assert_eq!(
            NetHeader::default().validate_tx(13, ALL),
            Err(HeaderError::FrameLength(13))
        );
        assert_eq!(
            NetHeader::default().validate_tx(MAX_FRAME + 1, ALL),
            Err(HeaderError::FrameLength(MAX_FRAME + 1))
        );
    }

    #[test]
    fn offloads_need_their_features() {
        let without = ALL & !(F_NET_HOST_TSO4 | F_NET_CSUM);
        assert_eq!(
            tso4(1448).validate_tx(10_000, without & !F_NET_HOST_TSO4 | F_NET_CSUM),
            Err(HeaderError::GsoType(GSO_TCPV4))
        );
        assert_eq!(
            tso4(1448).validate_tx(10_000, without),
            Err(HeaderError::ChecksumNotNegotiated)
        );
    }
}
