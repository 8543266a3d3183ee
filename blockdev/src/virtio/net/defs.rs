//! Wire constants of the virtio-net device (virtio 1.2, section 5.1) and
//! the limits this device model advertises and enforces.

use virtio_bindings::virtio_net as net;

pub use super::super::defs::{F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};

/// Virtio device ID of a network card.
pub const DEVICE_TYPE_NET: u32 = 1;

/// Bytes of `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers): the header in front of
/// every frame once VERSION_1 is negotiated, and the tap's vnet header
/// size.
pub const NET_HDR_SIZE: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
pub const NET_HDR_NUM_BUFFERS: u64 = 10;

/// Bytes of an Ethernet header; no frame is shorter.
pub const ETH_HEADER: usize = 14;
/// Largest frame (without the vnet header) either way: a 64 KiB GSO
/// packet with its Ethernet and VLAN headers, as Linux's virtio-net
/// sizes its big receive buffers.
pub const MAX_FRAME: usize = 65_550;
/// Largest rx buffer space a frame may need, header included.
pub const MAX_RX_BYTES: usize = NET_HDR_SIZE + MAX_FRAME;
/// Most descriptors the device follows in one chain (UIO_MAXIOV: a
/// chain becomes one readv/writev).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Largest virtqueue this device accepts (a power of two).
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Most queue pairs (tap queues) one device serves.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Header flag: the frame's checksum is partial (`csum_start`, `csum_offset`).
pub const HDR_F_NEEDS_CSUM: u8 = net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// Header flag (rx only): the checksum was already checked.
pub const HDR_F_DATA_VALID: u8 = net::VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// GSO type: not a GSO frame.
pub const GSO_NONE: u8 = net::VIRTIO_NET_HDR_GSO_NONE as u8;
/// GSO type: TCP over IPv4.
pub const GSO_TCPV4: u8 = net::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
/// GSO type: UDP fragmentation.
pub const GSO_UDP: u8 = net::VIRTIO_NET_HDR_GSO_UDP as u8;
/// GSO type: TCP over IPv6.
pub const GSO_TCPV6: u8 = net::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
/// GSO type bit: TCP with ECN.
pub const GSO_ECN: u8 = net::VIRTIO_NET_HDR_GSO_ECN as u8;

/// Feature bit: the device takes frames with partial checksums.
pub const F_NET_CSUM: u64 = 1 << net::VIRTIO_NET_F_CSUM;
/// Feature bit: the driver takes frames with partial checksums.
pub const F_NET_GUEST_CSUM: u64 = 1 << net::VIRTIO_NET_F_GUEST_CSUM;
/// Feature bit: `mac` is valid.
pub const F_NET_MAC: u64 = 1 << net::VIRTIO_NET_F_MAC;
/// Feature bit: the driver takes TSO over IPv4.
pub const F_NET_GUEST_TSO4: u64 = 1 << net::VIRTIO_NET_F_GUEST_TSO4;
/// Feature bit: the driver takes TSO over IPv6.
pub const F_NET_GUEST_TSO6: u64 = 1 << net::VIRTIO_NET_F_GUEST_TSO6;
/// Feature bit: the driver takes UFO.
pub const F_NET_GUEST_UFO: u64 = 1 << net::VIRTIO_NET_F_GUEST_UFO;
/// Feature bit: the device takes TSO over IPv4.
pub const F_NET_HOST_TSO4: u64 = 1 << net::VIRTIO_NET_F_HOST_TSO4;
/// Feature bit: the device takes TSO over IPv6.
pub const F_NET_HOST_TSO6: u64 = 1 << net::VIRTIO_NET_F_HOST_TSO6;
/// Feature bit: the device takes UFO.
pub const F_NET_HOST_UFO: u64 = 1 << net::VIRTIO_NET_F_HOST_UFO;
/// Feature bit: rx frames may span several chains (`num_buffers`).
pub const F_NET_MRG_RXBUF: u64 = 1 << net::VIRTIO_NET_F_MRG_RXBUF;
/// Feature bit: `status` is valid.
pub const F_NET_STATUS: u64 = 1 << net::VIRTIO_NET_F_STATUS;
/// Feature bit: a control virtqueue.
pub const F_NET_CTRL_VQ: u64 = 1 << net::VIRTIO_NET_F_CTRL_VQ;
/// Feature bit: several queue pairs (`max_virtqueue_pairs`).
pub const F_NET_MQ: u64 = 1 << net::VIRTIO_NET_F_MQ;
/// Feature bit: the driver announces itself (gratuitous ARP) when the
/// device sets [`NET_S_ANNOUNCE`], as after a restore or a migration.
pub const F_NET_GUEST_ANNOUNCE: u64 = 1 << net::VIRTIO_NET_F_GUEST_ANNOUNCE;

/// Config `status` bit: the link is up.
pub const NET_S_LINK_UP: u16 = net::VIRTIO_NET_S_LINK_UP as u16;
/// Config `status` bit: the driver should announce itself, then ack
/// with [`CTRL_ANNOUNCE_ACK`].
pub const NET_S_ANNOUNCE: u16 = net::VIRTIO_NET_S_ANNOUNCE as u16;

/// Control command class: multiqueue.
pub const CTRL_CLASS_MQ: u8 = net::VIRTIO_NET_CTRL_MQ as u8;
/// Control command of the MQ class: set the number of queue pairs used.
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
/// Control command class: announcements.
pub const CTRL_CLASS_ANNOUNCE: u8 = net::VIRTIO_NET_CTRL_ANNOUNCE as u8;
/// Control command of the announce class: the driver has announced
/// itself; the device clears [`NET_S_ANNOUNCE`].
pub const CTRL_ANNOUNCE_ACK: u8 = net::VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8;
/// Control ack: done.
pub const CTRL_OK: u8 = net::VIRTIO_NET_OK as u8;
/// Control ack: refused.
pub const CTRL_ERR: u8 = net::VIRTIO_NET_ERR as u8;

/// Features this device offers (MQ only with more than one pair).
pub const OFFERED_FEATURES: u64 = F_VERSION_1
    | F_RING_EVENT_IDX
    | F_RING_INDIRECT_DESC
    | F_NET_MAC
    | F_NET_STATUS
    | F_NET_MRG_RXBUF
    | F_NET_CSUM
    | F_NET_GUEST_CSUM
    | F_NET_HOST_TSO4
    | F_NET_HOST_TSO6
    | F_NET_HOST_UFO
    | F_NET_GUEST_TSO4
    | F_NET_GUEST_TSO6
    | F_NET_GUEST_UFO
    | F_NET_CTRL_VQ
    | F_NET_GUEST_ANNOUNCE;

/// Feature dependencies of virtio 1.2, 5.1.3.1: (feature, what it needs).
pub const FEATURE_REQUIRES: [(u64, u64); 9] = [
    (F_NET_GUEST_TSO4, F_NET_GUEST_CSUM),
    (F_NET_GUEST_TSO6, F_NET_GUEST_CSUM),
    (F_NET_GUEST_UFO, F_NET_GUEST_CSUM),
    (F_NET_HOST_TSO4, F_NET_CSUM),
    (F_NET_HOST_TSO6, F_NET_CSUM),
    (F_NET_HOST_UFO, F_NET_CSUM),
    (F_NET_MQ, F_NET_CTRL_VQ),
    (F_NET_GUEST_ANNOUNCE, F_NET_CTRL_VQ),
    (F_NET_CTRL_VQ, F_VERSION_1),
];
