//! The guest side of the power-cut test: a random sequence of guest
//! operations run on an image over a [`RecordingStorage`], and a plain
//! model of what the guest wrote, snapshotted at every completed flush.
//!
//! Guest I/O is confined to a few regions spread over several L2 tables (one
//! region straddles an L2 boundary), so that the model and the read-back
//! stay small while the metadata still spans several tables.

use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::image::Qcow2;
use qcow::Storage;

use super::recording::{Event, RecordingStorage, Rng, SECTOR};

#[derive(Debug, Clone)]
/// One configuration of the test: image options, guest layout and
/// workload shape.
pub struct Config {
    /// Shown in reports and matched by `QCOW_CRASH_CONFIG`.
    pub name: String,
    pub opts: CreateOptions,
    pub layout: Layout,
    pub mix: Mix,
    /// Guest operations per workload (a final flush is added).
    pub ops: usize,
    pub states_per_workload: usize,
    /// Compare the live image with the model after every operation
    /// (otherwise after every flush).
    pub check_every_op: bool,
}

/// Where the guest does its I/O.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Virtual disk size.
    pub size: u64,
    /// `(guest offset, length)`, cluster aligned, in ascending order.
    pub regions: Vec<(u64, u64)>,
}

/// The bytes one operation changed: `data` (or zeros when `None`) at
/// `offset`.
#[derive(Debug, Clone)]
pub struct Effect {
    pub offset: u64,
    pub len: u64,
    pub data: Option<Arc<Vec<u8>>>,
}

impl Effect {
    /// The byte this effect gives guest offset `pos` (inside it).
    pub fn byte(&self, pos: u64) -> u8 {
        self.data
            .as_ref()
            .map_or(0, |d| d[(pos - self.offset) as usize])
    }
}

/// A guest operation.
#[derive(Debug, Clone)]
pub enum Op {
    Write {
        offset: u64,
        data: Arc<Vec<u8>>,
    },
    Zero {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    Compressed {
        cluster: u64,
        data: Arc<Vec<u8>>,
    },
    SnapshotCreate {
        name: String,
    },
    /// Revert to snapshot `name`, whose guest contents are `contents`.
    SnapshotApply {
        name: String,
        contents: Model,
    },
    SnapshotDelete {
        name: String,
    },
    Flush,
}

impl Op {
    /// A short description for failure reports.
    pub fn describe(&self, cluster_size: u64) -> String {
        let cs = cluster_size;
        let span = |o: u64, l: u64| {
            format!(
                "[{o:#x}, {:#x}) (clusters {}..={})",
                o + l,
                o / cs,
                (o + l - 1) / cs
            )
        };
        match self {
            Op::Write { offset, data } => format!("write {}", span(*offset, data.len() as u64)),
            Op::Zero { offset, len, unmap } => {
                format!("write_zeroes unmap={unmap} {}", span(*offset, *len))
            }
            Op::Discard { offset, len } => format!("discard {}", span(*offset, *len)),
            Op::Compressed { cluster, .. } => format!("write_compressed cluster {cluster}"),
            Op::SnapshotCreate { name } => format!("snapshot create {name}"),
            Op::SnapshotApply { name, .. } => format!("snapshot apply {name}"),
            Op::SnapshotDelete { name } => format!("snapshot delete {name}"),
            Op::Flush => "flush".into(),
        }
    }

    /// What the operation does to the guest contents (discard only drops
    /// whole clusters; partial clusters are left alone).
    pub fn effects(&self, cluster_size: u64) -> Vec<Effect> {
        match self {
            Op::Write { offset, data } => vec![Effect {
                offset: *offset,
                len: data.len() as u64,
                data: Some(data.clone()),
            }],
            Op::Zero { offset, len, .. } => vec![Effect {
                offset: *offset,
                len: *len,
                data: None,
            }],
            Op::Discard { offset, len } => {
                let first = offset.div_ceil(cluster_size);
                let end = (offset + len) / cluster_size;
                if first < end {
                    vec![Effect {
                        offset: first * cluster_size,
                        len: (end - first) * cluster_size,
                        data: None,
                    }]
                } else {
                    Vec::new()
                }
            }
            Op::Compressed { cluster, data } => vec![Effect {
                offset: cluster * cluster_size,
                len: cluster_size,
                data: Some(data.clone()),
            }],
            Op::SnapshotApply { contents, .. } => contents
                .regions
                .iter()
                .map(|(offset, data)| Effect {
                    offset: *offset,
                    len: data.len() as u64,
                    data: Some(data.clone()),
                })
                .collect(),
            Op::SnapshotCreate { .. } | Op::SnapshotDelete { .. } | Op::Flush => Vec::new(),
        }
    }
}

/// Guest contents of the regions; cloning is cheap (regions are shared
/// until written).
#[derive(Debug, Clone)]
pub struct Model {
    pub regions: Vec<(u64, Arc<Vec<u8>>)>,
}

impl Model {
    fn new(layout: &Layout) -> Model {
        Model {
            regions: layout
                .regions
                .iter()
                .map(|&(o, l)| (o, Arc::new(vec![0u8; l as usize])))
                .collect(),
        }
    }

    fn apply(&mut self, e: &Effect) {
        let (start, region) = self
            .regions
            .iter_mut()
            .find(|(o, r)| *o <= e.offset && e.offset + e.len <= *o + r.len() as u64)
            .expect("operations stay inside one region");
        let at = (e.offset - *start) as usize;
        let bytes = &mut Arc::make_mut(region)[at..at + e.len as usize];
        match &e.data {
            Some(d) => bytes.copy_from_slice(d),
            None => bytes.fill(0),
        }
    }
}

/// An operation as run: where in the log it started, and what it did.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub op: Op,
    /// Log length when the operation was issued.
    pub start: usize,
    pub effects: Vec<Effect>,
}

/// A guest flush that returned.
#[derive(Debug, Clone)]
pub struct FlushPoint {
    /// Log length when it returned: a crash at or after this point keeps
    /// everything the model holds.
    pub done: usize,
    /// Index of the first operation after it.
    pub next_op: usize,
    pub model: Model,
}

/// A finished workload.
pub struct Workload {
    pub initial: Vec<u8>,
    pub log: Vec<Event>,
    pub ops: Vec<OpRecord>,
    /// In order; the first is the state right after create.
    pub flushes: Vec<FlushPoint>,
    pub final_image: Vec<u8>,
}

/// Weights of the operations, in percent: write, write_zeroes, discard,
/// write_compressed, internal snapshot create/apply/delete (the rest is
/// flush).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub write: u64,
    pub zero: u64,
    pub discard: u64,
    pub compressed: u64,
    pub snapshot: u64,
}

impl Mix {
    /// This mix, or with compressed writes made plain writes (so that the
    /// share of flushes stays) when `allowed` is false.
    pub fn compressed_if(self, allowed: bool) -> Mix {
        if allowed {
            return self;
        }
        Mix {
            write: self.write + self.compressed,
            compressed: 0,
            ..self
        }
    }
}

/// Guest bytes, distinct per operation tag and offset, rarely zero.
fn pattern(tag: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|pos| {
            let mut x = (pos / 8) ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 29;
            (x >> ((pos % 8) * 8)) as u8 | 1
        })
        .collect()
}

/// A cluster's worth of very compressible bytes.
fn compressible(tag: u64, len: u64) -> Vec<u8> {
    let unit = tag.to_le_bytes();
    (0..len as usize)
        .map(|i| unit[i % 8] ^ (i / 4096) as u8)
        .collect()
}

/// Snapshots taken and not deleted: name and guest contents.
type Snapshots = Vec<(String, Model)>;

fn pick_snapshot_op(rng: &mut Rng, snapshots: &Snapshots, tag: u64) -> Op {
    if snapshots.is_empty() || (snapshots.len() < 3 && rng.chance(40)) {
        return Op::SnapshotCreate {
            name: format!("s{tag:x}"),
        };
    }
    let (name, contents) = &snapshots[rng.below(snapshots.len() as u64) as usize];
    if rng.chance(50) {
        Op::SnapshotApply {
            name: name.clone(),
            contents: contents.clone(),
        }
    } else {
        Op::SnapshotDelete { name: name.clone() }
    }
}

fn pick_op(
    rng: &mut Rng,
    layout: &Layout,
    cs: u64,
    mix: Mix,
    snapshots: &Snapshots,
    tag: u64,
) -> Op {
    let (region_start, region_len) =
        layout.regions[rng.below(layout.regions.len() as u64) as usize];
    let sectors_in = region_len / SECTOR;
    // A sector-aligned range of up to `max` sectors inside the region.
    let sectors = |rng: &mut Rng, max: u64| {
        let first = rng.below(sectors_in);
        let n = 1 + rng.below(max.min(sectors_in - first));
        (region_start + first * SECTOR, n * SECTOR)
    };
    let clusters = |rng: &mut Rng| {
        let clusters_in = region_len / cs;
        let first = rng.below(clusters_in);
        let n = 1 + rng.below(2.min(clusters_in - first));
        (region_start + first * cs, n * cs)
    };
    let per_cluster = cs / SECTOR;
    let roll = rng.below(100);
    if roll < mix.write {
        let (offset, len) = match rng.below(10) {
            0..=3 => sectors(rng, per_cluster),
            4..=5 => sectors(rng, 4),
            6..=7 => sectors(rng, 2 * per_cluster + 4),
            _ => {
                // Not sector aligned.
                let start = rng.below(region_len);
                let len = 1 + rng.below((region_len - start).min(2 * cs));
                (region_start + start, len)
            }
        };
        return Op::Write {
            offset,
            data: Arc::new(pattern(tag, offset, len)),
        };
    }
    let roll = roll - mix.write;
    if roll < mix.zero {
        let (offset, len) = if rng.chance(60) {
            clusters(rng)
        } else {
            sectors(rng, 2 * per_cluster)
        };
        return Op::Zero {
            offset,
            len,
            unmap: rng.chance(50),
        };
    }
    let roll = roll - mix.zero;
    if roll < mix.discard {
        let (offset, len) = if rng.chance(70) {
            clusters(rng)
        } else {
            sectors(rng, 2 * per_cluster)
        };
        return Op::Discard { offset, len };
    }
    let roll = roll - mix.discard;
    if roll < mix.compressed {
        let (offset, _) = clusters(rng);
        return Op::Compressed {
            cluster: offset / cs,
            data: Arc::new(compressible(tag, cs)),
        };
    }
    if roll - mix.compressed < mix.snapshot {
        return pick_snapshot_op(rng, snapshots, tag);
    }
    Op::Flush
}

fn run_op(image: &Qcow2, op: &Op) -> qcow::Result<()> {
    match op {
        Op::Write { offset, data } => image.write_at(data, *offset),
        Op::Zero { offset, len, unmap } => image.write_zeroes(*offset, *len, *unmap),
        Op::Discard { offset, len } => image.discard(*offset, *len),
        Op::Compressed { cluster, data } => image.write_compressed(*cluster, data).map(|_| ()),
        Op::SnapshotCreate { name } => image.create_snapshot(name).map(|_| ()),
        Op::SnapshotApply { name, .. } => image.apply_snapshot(name),
        Op::SnapshotDelete { name } => image.delete_snapshot(name),
        Op::Flush => image.flush(),
    }
}

/// Reads every region of `image` and compares it with `model`; returns the
/// first difference.
pub fn compare_live(image: &Qcow2, model: &Model) -> Result<(), String> {
    for (offset, want) in &model.regions {
        let mut got = vec![0u8; want.len()];
        image
            .read_at(&mut got, *offset)
            .map_err(|e| format!("read at {offset:#x}: {e}"))?;
        if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Err(format!(
                "guest byte {:#x} reads {:#04x}, the model has {:#04x}",
                offset + i as u64,
                got[i],
                want[i]
            ));
        }
    }
    Ok(())
}

/// Creates an image with `opts` and runs `ops` random operations on it,
/// recording every storage request after create. Checks the live image
/// against the model after every operation (`check_every_op`) or every
/// flush; an error names the operation that failed.
pub fn run(
    opts: &CreateOptions,
    layout: &Layout,
    mix: Mix,
    ops: usize,
    seed: u64,
    check_every_op: bool,
) -> Result<Workload, String> {
    let rec = Arc::new(RecordingStorage::new());
    let file: Arc<dyn Storage> = rec.clone();
    let image = create(file, None, None, opts).map_err(|e| format!("create: {e}"))?;
    let cs = opts.cluster_size;
    let initial = rec.start_recording();
    let mut rng = Rng::new(seed);
    let mut model = Model::new(layout);
    let mut flushes = vec![FlushPoint {
        done: 0,
        next_op: 0,
        model: model.clone(),
    }];
    let mut records: Vec<OpRecord> = Vec::with_capacity(ops + 1);
    let mut snapshots = Snapshots::new();
    for i in 0..=ops {
        // The last operation is always a flush.
        let op = if i == ops {
            Op::Flush
        } else {
            pick_op(
                &mut rng,
                layout,
                cs,
                mix,
                &snapshots,
                seed ^ ((i as u64) << 40),
            )
        };
        let start = rec.log_len();
        let effects = op.effects(cs);
        let context = |what: String| {
            let history: Vec<String> = records
                .iter()
                .enumerate()
                .map(|(j, r)| format!("    op {j}: {}", r.op.describe(cs)))
                .collect();
            format!(
                "live op {i} ({}): {what}\n  operations before it:\n{}",
                op.describe(cs),
                history.join("\n")
            )
        };
        run_op(&image, &op).map_err(|e| context(e.to_string()))?;
        for e in &effects {
            model.apply(e);
        }
        match &op {
            Op::SnapshotCreate { name } => snapshots.push((name.clone(), model.clone())),
            Op::SnapshotDelete { name } => snapshots.retain(|(n, _)| n != name),
            _ => {}
        }
        if check_every_op || matches!(op, Op::Flush) {
            compare_live(&image, &model).map_err(context)?;
        }
        let is_flush = matches!(op, Op::Flush);
        records.push(OpRecord { op, start, effects });
        if is_flush {
            flushes.push(FlushPoint {
                done: rec.log_len(),
                next_op: i + 1,
                model: model.clone(),
            });
        }
    }
    drop(image);
    let final_image = rec.contents();
    Ok(Workload {
        initial,
        log: rec.take_log(),
        ops: records,
        flushes,
        final_image,
    })
}
