//! A [`Storage`] that records every write and flush in order, and the
//! power-cut model that turns such a log into the states a disk with a
//! volatile write cache could be left in.
//!
//! The model: everything issued before the last flush that completed
//! before the crash is durable; of the writes issued after it, any subset
//! reached the disk, in any order, and each of them possibly only in part,
//! torn at 512-byte sector boundaries (a sector itself is atomic).
//!
//! `discard` is recorded but changes nothing: QEMU's contract is that a
//! discarded range reads back as zeros or as its old contents, and keeping
//! the old contents is the state that hides the least (stale metadata or
//! data stays visible to the checks).

use std::sync::Mutex;

use qcow::{Result, Storage};

/// Sector size: the unit a write can be torn at.
pub const SECTOR: u64 = 512;

/// A tiny deterministic generator (xorshift64*), so failures replay.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from any seed (zero is remapped: xorshift needs a bit).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One storage request, in the order it was issued.
#[derive(Debug, Clone)]
pub enum Event {
    /// `write_at(data, offset)`.
    Write { offset: u64, data: Vec<u8> },
    /// `flush()`: everything before it is durable once it returns.
    Flush,
    /// `set_len(len)` (and `allocate` growing the file).
    SetLen(u64),
    /// `discard(offset, len)`: recorded only.
    Discard { offset: u64, len: u64 },
}

struct Inner {
    data: Vec<u8>,
    log: Vec<Event>,
    recording: bool,
}

/// In-memory storage that logs every write and flush.
pub struct RecordingStorage {
    inner: Mutex<Inner>,
}

impl RecordingStorage {
    /// Empty storage, not recording yet.
    pub fn new() -> Self {
        RecordingStorage {
            inner: Mutex::new(Inner {
                data: Vec::new(),
                log: Vec::new(),
                recording: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recording lock poisoned")
    }

    /// Starts recording from now on; returns the current contents, the
    /// durable state every crash state starts from.
    pub fn start_recording(&self) -> Vec<u8> {
        let mut inner = self.lock();
        inner.recording = true;
        inner.log.clear();
        inner.data.clone()
    }

    /// Number of events recorded so far: the crash point "now".
    pub fn log_len(&self) -> usize {
        self.lock().log.len()
    }

    /// The recorded events.
    pub fn take_log(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().log)
    }

    /// The live contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().data.clone()
    }
}

impl Storage for RecordingStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let inner = self.lock();
        let len = inner.data.len() as u64;
        buf.fill(0);
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&inner.data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut inner = self.lock();
        apply_write(&mut inner.data, offset, buf);
        if inner.recording {
            inner.log.push(Event::Write {
                offset,
                data: buf.to_vec(),
            });
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        if inner.recording {
            inner.log.push(Event::Flush);
        }
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.lock().data.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        let mut inner = self.lock();
        inner.data.resize(len as usize, 0);
        if inner.recording {
            inner.log.push(Event::SetLen(len));
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let mut inner = self.lock();
        if inner.recording {
            inner.log.push(Event::Discard { offset, len });
        }
        Ok(())
    }
}

fn apply_write(data: &mut Vec<u8>, offset: u64, buf: &[u8]) {
    let end = offset as usize + buf.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(buf);
}

/// Applies one event to a durable image (flushes and discards change
/// nothing).
pub fn apply(image: &mut Vec<u8>, event: &Event) {
    match event {
        Event::Write { offset, data } => apply_write(image, *offset, data),
        Event::SetLen(len) => image.resize(*len as usize, 0),
        Event::Flush | Event::Discard { .. } => {}
    }
}

/// Index of the first event that is not known durable at crash point
/// `point` (events `0..point` were issued): one past the last flush before
/// `point`, or 0.
pub fn durable_end(log: &[Event], point: usize) -> usize {
    log[..point]
        .iter()
        .rposition(|e| matches!(e, Event::Flush))
        .map_or(0, |i| i + 1)
}

/// How much of a write issued after the last flush reached the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    /// All of it.
    Whole,
    /// Its first `n` sectors (of the sectors it touches).
    Prefix(usize),
    /// The sectors whose bit is set, by position within the write.
    Sectors(Vec<bool>),
}

/// The writes of a crash state that landed beyond the durable prefix, in
/// the order they were applied.
#[derive(Debug, Clone, Default)]
pub struct CrashPlan {
    /// `(event index, how much of it landed)`.
    pub landed: Vec<(usize, Landed)>,
}

/// Splits a write at `offset` of `len` bytes at absolute sector boundaries;
/// returns `(start, end)` byte positions within the write.
fn sector_pieces(offset: u64, len: usize) -> Vec<(usize, usize)> {
    let mut pieces = Vec::new();
    let mut pos = 0usize;
    while pos < len {
        let abs = offset + pos as u64;
        let next = ((abs / SECTOR + 1) * SECTOR - offset) as usize;
        let end = next.min(len);
        pieces.push((pos, end));
        pos = end;
    }
    pieces
}

/// Chooses which of the events `durable_end..point` reach the disk.
pub fn plan_crash(log: &[Event], durable_end: usize, point: usize, rng: &mut Rng) -> CrashPlan {
    // Sometimes everything or nothing, so both extremes are covered often.
    let keep_percent = match rng.below(8) {
        0 => 0,
        1 => 100,
        _ => rng.below(101),
    };
    let mut landed = Vec::new();
    for (index, event) in log.iter().enumerate().take(point).skip(durable_end) {
        let is_data = matches!(event, Event::Write { .. } | Event::SetLen(_));
        if !is_data || !rng.chance(keep_percent) {
            continue;
        }
        let how = match event {
            Event::Write { offset, data } => {
                let n = sector_pieces(*offset, data.len()).len();
                match rng.below(6) {
                    _ if n == 1 => Landed::Whole,
                    0 => Landed::Prefix(rng.below(n as u64) as usize),
                    1 => Landed::Sectors((0..n).map(|_| rng.chance(50)).collect()),
                    _ => Landed::Whole,
                }
            }
            _ => Landed::Whole,
        };
        landed.push((index, how));
    }
    // Issue order most of the time; otherwise a random permutation.
    if rng.chance(50) {
        for i in (1..landed.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            landed.swap(i, j);
        }
    }
    CrashPlan { landed }
}

/// The disk contents after the crash: `durable` (every event before the
/// last flush applied) plus the writes of `plan`.
pub fn crash_image(durable: &[u8], log: &[Event], plan: &CrashPlan) -> Vec<u8> {
    let mut image = durable.to_vec();
    for (index, how) in &plan.landed {
        match (&log[*index], how) {
            (Event::Write { offset, data }, Landed::Prefix(n)) => {
                for (start, end) in sector_pieces(*offset, data.len()).into_iter().take(*n) {
                    apply_write(&mut image, offset + start as u64, &data[start..end]);
                }
            }
            (Event::Write { offset, data }, Landed::Sectors(mask)) => {
                for ((start, end), &on) in sector_pieces(*offset, data.len()).iter().zip(mask) {
                    if on {
                        apply_write(&mut image, offset + *start as u64, &data[*start..*end]);
                    }
                }
            }
            (event, _) => apply(&mut image, event),
        }
    }
    image
}

/// One line per event of `log[range]`, for failure reports.
pub fn describe_events(log: &[Event], range: std::ops::Range<usize>, plan: &CrashPlan) -> String {
    let mut out = String::new();
    for index in range {
        let landed = plan
            .landed
            .iter()
            .position(|(i, _)| *i == index)
            .map(|pos| format!("landed #{pos} {:?}", plan.landed[pos].1));
        let what = match &log[index] {
            Event::Write { offset, data } => {
                format!("write {} bytes at {offset:#x}", data.len())
            }
            Event::Flush => "flush".to_string(),
            Event::SetLen(len) => format!("set_len {len:#x}"),
            Event::Discard { offset, len } => format!("discard {len:#x} at {offset:#x}"),
        };
        out.push_str(&format!(
            "    [{index}] {what}{}\n",
            landed.map_or(String::new(), |l| format!("  <- {l}"))
        ));
    }
    out
}

#[test]
fn torn_writes_split_at_absolute_sectors() {
    assert_eq!(sector_pieces(500, 30), vec![(0, 12), (12, 30)]);
    assert_eq!(sector_pieces(0, 1024), vec![(0, 512), (512, 1024)]);
    let log = vec![
        Event::Write {
            offset: 0,
            data: vec![1; 1024],
        },
        Event::Flush,
        Event::Write {
            offset: 256,
            data: vec![2; 512],
        },
    ];
    let mut durable = Vec::new();
    for e in &log[..durable_end(&log, 3)] {
        apply(&mut durable, e);
    }
    let plan = CrashPlan {
        landed: vec![(2, Landed::Prefix(1))],
    };
    let image = crash_image(&durable, &log, &plan);
    assert_eq!(&image[..256], &[1; 256][..]);
    assert_eq!(&image[256..512], &[2; 256][..]);
    assert_eq!(&image[512..], &[1; 512][..]);
}
