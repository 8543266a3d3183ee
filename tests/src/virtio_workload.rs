//! The request stream of the virtio-blk kill -9 harness, shared by the
//! writer child (`virtio_writer`) and the parent test
//! (`tests/kill9_virtio.rs`): OUT requests (split into data descriptors
//! of any byte length, at any buffer alignment), WRITE_ZEROES (with and
//! without UNMAP) and DISCARD requests of one to three segments, and
//! FLUSH, all in whole sectors and derived from a seed. Their effect on
//! the guest disk is given as [`Op`]s, whose data is that of
//! [`crate::workload::data_byte`] for the request's index.

use crate::workload::{mix, Op};

/// Bytes of a virtio sector.
pub const SECTOR: u64 = 512;

/// Largest OUT request of the stream.
pub const MAX_OUT_BYTES: u64 = 512 << 10;

/// Most data descriptors of an OUT request.
pub const MAX_OUT_SEGMENTS: usize = 8;

/// Largest gap before one data buffer in guest memory (so buffers sit at
/// any alignment).
pub const MAX_SKEW: u32 = 511;

/// Most segments of a DISCARD or WRITE_ZEROES request.
pub const MAX_RANGES: usize = 3;

/// One data descriptor of an OUT request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    /// Bytes it carries.
    pub len: u32,
    /// Bytes of guest memory left unused before its buffer.
    pub skew: u32,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// VIRTIO_BLK_T_OUT of `len` bytes at `offset`, the data split into
    /// `segments` (their lengths add up to `len`).
    Out {
        offset: u64,
        len: u64,
        segments: Vec<DataSegment>,
    },
    /// VIRTIO_BLK_T_WRITE_ZEROES of disjoint `(offset, len)` ranges.
    WriteZeroes {
        ranges: Vec<(u64, u64)>,
        unmap: bool,
    },
    /// VIRTIO_BLK_T_DISCARD of disjoint `(offset, len)` ranges.
    Discard { ranges: Vec<(u64, u64)> },
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
}

/// One request of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioRequest {
    /// Its place in the stream (the `N` of the log's lines).
    pub index: u64,
    pub kind: RequestKind,
    /// Sent through an indirect descriptor table (when the driver has the
    /// descriptors for a direct chain; otherwise always indirect).
    pub indirect: bool,
}

impl VirtioRequest {
    /// The guest byte ranges the request changes.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        match &self.kind {
            RequestKind::Out { offset, len, .. } => vec![(*offset, *len)],
            RequestKind::WriteZeroes { ranges, .. } | RequestKind::Discard { ranges } => {
                ranges.clone()
            }
            RequestKind::Flush => Vec::new(),
        }
    }

    /// Whether it changes a byte `other` changes too.
    pub fn overlaps(&self, other: &VirtioRequest) -> bool {
        let theirs = other.ranges();
        self.ranges().iter().any(|&(a, a_len)| {
            theirs
                .iter()
                .any(|&(b, b_len)| a < b + b_len && b < a + a_len)
        })
    }

    /// The request's effect on the guest disk, as operations whose data
    /// is that of operation `self.index`.
    pub fn effects(&self) -> Vec<Op> {
        match &self.kind {
            RequestKind::Out { offset, len, .. } => vec![Op::Write {
                offset: *offset,
                len: *len,
            }],
            RequestKind::WriteZeroes { ranges, unmap } => ranges
                .iter()
                .map(|&(offset, len)| Op::Zero {
                    offset,
                    len,
                    unmap: *unmap,
                })
                .collect(),
            RequestKind::Discard { ranges } => ranges
                .iter()
                .map(|&(offset, len)| Op::Discard { offset, len })
                .collect(),
            RequestKind::Flush => vec![Op::Flush],
        }
    }
}

/// The deterministic request stream over a disk of `size` bytes with
/// clusters of `cluster_size`, for round `round` of a trial.
pub struct VirtioWorkload {
    state: u64,
    cluster_size: u64,
    size: u64,
    index: u64,
    /// Where the last write ended: a third of writes start there, so that
    /// the device merges runs of them.
    last_out_end: Option<u64>,
}

impl VirtioWorkload {
    /// The stream of `seed` and `round`.
    pub fn new(seed: u64, round: u32, cluster_size: u64, size: u64) -> VirtioWorkload {
        VirtioWorkload {
            state: mix(seed ^ 0x7669_7274_696f) ^ u64::from(round),
            cluster_size,
            size,
            index: 0,
            last_out_end: None,
        }
    }

    fn rand(&mut self) -> u64 {
        self.state = mix(self.state);
        self.state
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rand() % n.max(1)
    }

    /// Whole sectors: a third of the time whole clusters, otherwise any
    /// sector and length up to `max_clusters` clusters (so within one
    /// cluster, or across several), at most `max_len` bytes.
    fn range(&mut self, max_clusters: u64, max_len: u64) -> (u64, u64) {
        let cs = self.cluster_size;
        let sectors = self.size / SECTOR;
        let (offset, len) = if self.below(3) == 0 {
            let offset = self.below(self.size / cs) * cs;
            (offset, (1 + self.below(max_clusters)) * cs)
        } else {
            let offset = self.below(sectors) * SECTOR;
            (
                offset,
                (1 + self.below(max_clusters * cs / SECTOR)) * SECTOR,
            )
        };
        let len = len.min(max_len).min(self.size - offset).max(SECTOR);
        (offset, len)
    }

    /// Up to [`MAX_RANGES`] disjoint ranges for a discard or write-zeroes.
    fn ranges(&mut self) -> Vec<(u64, u64)> {
        let count = 1 + self.below(MAX_RANGES as u64) as usize;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for _ in 0..count {
            let (offset, len) = self.range(6, u64::MAX);
            if !ranges
                .iter()
                .any(|&(o, l)| offset < o + l && o < offset + len)
            {
                ranges.push((offset, len));
            }
        }
        ranges
    }

    /// `len` bytes cut into data descriptors at random byte boundaries.
    fn segments(&mut self, len: u64) -> Vec<DataSegment> {
        let count = match self.below(4) {
            0 => 1,
            1 | 2 => 1 + self.below(4),
            _ => 1 + self.below(MAX_OUT_SEGMENTS as u64),
        }
        .min(len) as usize;
        let mut cuts: Vec<u64> = (1..count).map(|_| 1 + self.below(len - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut segments = Vec::with_capacity(cuts.len() + 1);
        let mut at = 0;
        for end in cuts.into_iter().chain([len]) {
            let skew = if self.below(2) == 0 {
                0
            } else {
                self.below(u64::from(MAX_SKEW) + 1) as u32
            };
            segments.push(DataSegment {
                len: (end - at) as u32,
                skew,
            });
            at = end;
        }
        segments
    }

    /// The next request.
    pub fn next_request(&mut self) -> VirtioRequest {
        let index = self.index;
        self.index += 1;
        let kind = match self.below(100) {
            0..=54 => {
                let (mut offset, mut len) = self.range(3, MAX_OUT_BYTES);
                if let Some(end) = self.last_out_end.filter(|_| self.below(3) == 0) {
                    if end < self.size {
                        offset = end;
                        len = len.min(self.size - end);
                    }
                }
                self.last_out_end = Some(offset + len);
                let segments = self.segments(len);
                RequestKind::Out {
                    offset,
                    len,
                    segments,
                }
            }
            55..=62 => {
                let (offset, len) = self.range(16, MAX_OUT_BYTES);
                let segments = self.segments(len);
                RequestKind::Out {
                    offset,
                    len,
                    segments,
                }
            }
            63..=74 => {
                let ranges = self.ranges();
                let unmap = self.below(2) == 0;
                RequestKind::WriteZeroes { ranges, unmap }
            }
            75..=85 => RequestKind::Discard {
                ranges: self.ranges(),
            },
            _ => RequestKind::Flush,
        };
        let indirect = self.below(2) == 0;
        VirtioRequest {
            index,
            kind,
            indirect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_whole_sectors_inside_the_disk() {
        for cluster_size in [512u64, 4096, 65536] {
            let size = 6 << 20;
            let mut w = VirtioWorkload::new(7, 1, cluster_size, size);
            for _ in 0..2000 {
                let r = w.next_request();
                for (offset, len) in r.ranges() {
                    assert!(offset.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR));
                    assert!(len > 0 && offset + len <= size, "{r:?}");
                }
                if let RequestKind::Out { len, segments, .. } = &r.kind {
                    assert!(*len <= MAX_OUT_BYTES);
                    assert!(segments.len() <= MAX_OUT_SEGMENTS);
                    assert_eq!(segments.iter().map(|s| u64::from(s.len)).sum::<u64>(), *len);
                    assert!(segments.iter().all(|s| s.len > 0 && s.skew <= MAX_SKEW));
                }
                let ranges = r.ranges();
                for (i, &(a, a_len)) in ranges.iter().enumerate() {
                    for &(b, b_len) in &ranges[i + 1..] {
                        assert!(a + a_len <= b || b + b_len <= a, "{r:?}");
                    }
                }
            }
        }
    }
}
