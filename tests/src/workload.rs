//! The operations of the kill -9 harnesses and their effect on a model of
//! the guest disk. The qcow-level stream ([`Workload`]) is shared by the
//! writer child (`crash_writer`) and the parent test (`tests/kill9.rs`);
//! the virtio-blk harness (`virtio_writer`, `tests/kill9_virtio.rs`) builds
//! its requests from the same [`Op`]s and data ([`data_byte`]). Writer and
//! parent derive the same operations and the same data from a seed, so the
//! parent can recompute what the child wrote without being told.

/// One operation of the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes [`data_byte`] bytes.
    Write { offset: u64, len: u64 },
    /// `write_zeroes`, with or without unmapping.
    Zero { offset: u64, len: u64, unmap: bool },
    /// `discard`: whole clusters in the range read as zero afterwards,
    /// partial clusters keep their data.
    Discard { offset: u64, len: u64 },
    /// `write_compressed` of one whole cluster of compressible
    /// [`data_byte`] bytes.
    Compressed { cluster: u64 },
    /// `flush`; the child logs the index once it returns.
    Flush,
    /// `create_snapshot(name)`.
    SnapshotCreate { name: String },
    /// `delete_snapshot(name)`.
    SnapshotDelete { name: String },
    /// Bytes of one value (only in the parent's record of what qemu-io
    /// wrote; the child never does this).
    Fill { offset: u64, len: u64, byte: u8 },
}

impl Op {
    /// Applies the operation (operation `index` of `round`) to `disk`, a
    /// model of the guest disk of an image with clusters of `cluster_size`.
    pub fn apply(&self, seed: u64, round: u32, index: u64, cluster_size: u64, disk: &mut [u8]) {
        let range = |offset: u64, len: u64| offset as usize..(offset + len) as usize;
        let cs = cluster_size;
        match self {
            Op::Write { offset, len } => {
                fill(
                    seed,
                    round,
                    index,
                    *offset,
                    false,
                    &mut disk[range(*offset, *len)],
                );
            }
            Op::Compressed { cluster } => {
                fill(
                    seed,
                    round,
                    index,
                    cluster * cs,
                    true,
                    &mut disk[range(cluster * cs, cs)],
                );
            }
            Op::Zero { offset, len, .. } => disk[range(*offset, *len)].fill(0),
            Op::Discard { offset, len } => {
                let (start, end) = discarded(*offset, *len, cs);
                if start < end {
                    disk[range(start, end - start)].fill(0);
                }
            }
            Op::Fill { offset, len, byte } => disk[range(*offset, *len)].fill(*byte),
            Op::Flush | Op::SnapshotCreate { .. } | Op::SnapshotDelete { .. } => {}
        }
    }

    /// The value the operation (operation `index` of `round`) gives guest
    /// byte `guest_offset`, if it touches it.
    pub fn value_at(
        &self,
        seed: u64,
        round: u32,
        index: u64,
        cluster_size: u64,
        guest_offset: u64,
    ) -> Option<u8> {
        let b = guest_offset;
        let cs = cluster_size;
        let within = |offset: u64, len: u64| b >= offset && b < offset + len;
        match self {
            Op::Write { offset, len } if within(*offset, *len) => {
                Some(data_byte(seed, round, index, b, false))
            }
            Op::Compressed { cluster } if within(cluster * cs, cs) => {
                Some(data_byte(seed, round, index, b, true))
            }
            Op::Zero { offset, len, .. } if within(*offset, *len) => Some(0),
            Op::Discard { offset, len } => {
                let (start, end) = discarded(*offset, *len, cs);
                (b >= start && b < end).then_some(0)
            }
            Op::Fill { offset, len, byte } if within(*offset, *len) => Some(*byte),
            _ => None,
        }
    }
}

/// The guest bytes a discard of `len` bytes at `offset` zeroes: the whole
/// clusters inside the range (partial clusters keep their data).
fn discarded(offset: u64, len: u64, cluster_size: u64) -> (u64, u64) {
    let start = offset.div_ceil(cluster_size) * cluster_size;
    let end = (offset + len) / cluster_size * cluster_size;
    (start, end)
}

/// Most snapshots the workload keeps at once.
pub const MAX_SNAPSHOTS: usize = 3;

/// What the stream depends on besides the seed.
#[derive(Debug, Clone)]
pub struct Params {
    /// Cluster size of the image.
    pub cluster_size: u64,
    /// Virtual size of the image.
    pub size: u64,
    /// Whether snapshot operations are allowed (not with 1-bit refcounts).
    pub snapshots: bool,
    /// Round number (part of every snapshot name, so names stay unique
    /// across rounds on the same image).
    pub round: u32,
}

/// splitmix64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The byte operation `index` of round `round` writes at `guest_offset`:
/// random-looking for plain writes, compressible for compressed ones.
pub fn data_byte(seed: u64, round: u32, index: u64, guest_offset: u64, compressible: bool) -> u8 {
    let op = mix(seed ^ mix(u64::from(round) << 40 ^ index));
    if compressible {
        (op as u8) ^ ((guest_offset / 256) as u8)
    } else {
        mix(op ^ (guest_offset / 8)).to_le_bytes()[(guest_offset % 8) as usize]
    }
}

/// Fills `buf` with the bytes of operation `index` from `guest_offset`.
pub fn fill(
    seed: u64,
    round: u32,
    index: u64,
    guest_offset: u64,
    compressible: bool,
    buf: &mut [u8],
) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = data_byte(seed, round, index, guest_offset + i as u64, compressible);
    }
}

/// The deterministic operation stream.
pub struct Workload {
    state: u64,
    params: Params,
    snapshots: Vec<String>,
    index: u64,
}

impl Workload {
    /// A stream for `seed` over an image that already has the snapshots
    /// `existing` (in table order).
    pub fn new(seed: u64, params: Params, existing: Vec<String>) -> Workload {
        Workload {
            state: mix(seed ^ 0x6b69_6c6c_3921) ^ u64::from(params.round),
            params,
            snapshots: existing,
            index: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        self.state = mix(self.state);
        self.state
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rand() % n.max(1)
    }

    /// A range: mostly within a few clusters, sometimes cluster aligned,
    /// sometimes spanning many clusters.
    fn range(&mut self, max_clusters: u64) -> (u64, u64) {
        let cs = self.params.cluster_size;
        let size = self.params.size;
        let clusters = size / cs;
        let aligned = self.below(3) == 0;
        let offset = if aligned {
            self.below(clusters) * cs
        } else {
            self.below(size)
        };
        let len = if aligned {
            (1 + self.below(max_clusters)) * cs
        } else {
            1 + self.below(max_clusters * cs)
        };
        (offset, len.min(size - offset).max(1))
    }

    /// The next operation and its index.
    pub fn next_op(&mut self) -> (u64, Op) {
        let index = self.index;
        self.index += 1;
        let r = self.below(100);
        let op = match r {
            0..=44 => {
                let (offset, len) = self.range(3);
                Op::Write { offset, len }
            }
            45..=51 => {
                let (offset, len) = self.range(16);
                Op::Write { offset, len }
            }
            52..=60 => {
                let (offset, len) = self.range(6);
                let unmap = self.below(2) == 0;
                Op::Zero { offset, len, unmap }
            }
            61..=67 => {
                let (offset, len) = self.range(6);
                Op::Discard { offset, len }
            }
            68..=74 => Op::Compressed {
                cluster: self.below(self.params.size / self.params.cluster_size),
            },
            75..=89 => Op::Flush,
            90..=95 if self.params.snapshots && self.snapshots.len() < MAX_SNAPSHOTS => {
                let name = format!("r{}-op{}", self.params.round, index);
                self.snapshots.push(name.clone());
                Op::SnapshotCreate { name }
            }
            96..=99 if !self.snapshots.is_empty() => {
                let i = self.below(self.snapshots.len() as u64) as usize;
                Op::SnapshotDelete {
                    name: self.snapshots.remove(i),
                }
            }
            _ => Op::Flush,
        };
        (index, op)
    }
}
