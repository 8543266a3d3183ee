//! The engine of `img bench`: qemu-img bench's request pattern on one
//! [`BlockQueue`].
//!
//! Semantics follow qemu-img's `bench_cb`: `count` requests of
//! `buffer_size` bytes, at most `depth` in flight; request i goes to the
//! offset before it plus `step`, wrapped modulo the disk size (qemu-img
//! 10.0's rule, so a request may still run past the end and fail, as it
//! does there). With a flush interval, a flush is sent whenever the number
//! of requests not yet issued is a multiple of it; with draining (the
//! default) no new request starts until everything in flight and the flush
//! have completed. The clock stops when the last request completes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backend::bufs::AlignedBuf;
use crate::disk::{BlockBackend, BlockQueue, Completion, IoBuf, Request};
use crate::error::{Error, Result};

/// Most requests the engine keeps in flight, whatever the depth asked.
pub const MAX_BENCH_DEPTH: u32 = crate::backend::MAX_QUEUE_DEPTH - FLUSH_SLOTS;

/// Queue slots kept for flushes beside the requests.
const FLUSH_SLOTS: u32 = 16;

/// Most bytes of request buffers the engine allocates.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;

/// Alignment of the request buffers (what O_DIRECT needs everywhere).
const BUFFER_ALIGN: usize = 4096;

/// User data of a drained flush.
const DRAINED_FLUSH: u64 = u64::MAX;
/// User data of a flush sent without draining.
const UNDRAINED_FLUSH: u64 = u64::MAX - 1;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Requests to complete.
    pub count: u32,
    /// Requests in flight at most.
    pub depth: u32,
    /// Bytes per request.
    pub buffer_size: u32,
    /// Offset of the first request.
    pub offset: u64,
    /// Offset increment between requests.
    pub step: u64,
    /// Write instead of read.
    pub write: bool,
    /// Byte the write buffers are filled with.
    pub pattern: u8,
    /// Flush whenever this many requests remain to be issued (0: never).
    pub flush_interval: u32,
    /// Wait for requests in flight before each flush, and for the flush.
    pub drain_on_flush: bool,
}

impl Default for BenchConfig {
    /// qemu-img bench's defaults.
    fn default() -> Self {
        BenchConfig {
            count: 75000,
            depth: 64,
            buffer_size: 4096,
            offset: 0,
            step: 4096,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain_on_flush: true,
        }
    }
}

/// The state of qemu-img's `BenchData`.
struct Run<'a> {
    cfg: &'a BenchConfig,
    queue: Box<dyn BlockQueue>,
    size: u64,
    /// Requests not yet completed.
    n: u32,
    in_flight: u32,
    in_flush: bool,
    offset: u64,
    bufs: Vec<AlignedBuf>,
    free_bufs: Vec<usize>,
    /// Flushes that found the queue full, sent as soon as it has room.
    owed_flushes: VecDeque<u64>,
    /// Completions already taken off the queue by [`Run::issue`].
    early: VecDeque<Completion>,
    /// The queue's [`BlockQueue::completes_on_push`].
    completes_on_push: bool,
}

impl Run<'_> {
    /// Starts requests while fewer than `depth` are in flight.
    fn issue(&mut self) -> Result<()> {
        while self.n > self.in_flight && self.in_flight < self.cfg.depth {
            let offset = self.offset;
            self.in_flight += 1;
            self.offset = if self.size == 0 {
                0
            } else {
                (self.offset + self.cfg.step) % self.size
            };
            let index = self
                .free_bufs
                .pop()
                .expect("a buffer for every request in flight");
            let buf = self.bufs[index].as_mut_slice();
            let iobuf = IoBuf {
                addr: buf.as_mut_ptr(),
                len: buf.len(),
            };
            let request = if self.cfg.write {
                Request::Write {
                    offset,
                    bufs: vec![iobuf],
                }
            } else {
                Request::Read {
                    offset,
                    bufs: vec![iobuf],
                }
            };
            // SAFETY: buffer `index` belongs to this request alone (it is
            // off the free list) until its completion is popped in `run`,
            // and `bufs` outlives the queue (drained before it is dropped).
            unsafe { self.queue.push(request, index as u64) }?;
            // A queue that runs a request as it is pushed (a foreign
            // image's writes) has its result now: qemu-img exits at the
            // first failed request, before its driver runs the next one
            // (a vmdk serializes them), so none is issued after a failure.
            // Other queues are not asked: their requests run together once
            // submitted, as qemu-img's do (and asking costs every push).
            if self.completes_on_push {
                while let Some(c) = self.queue.pop_completion() {
                    let failed = c.result.is_err();
                    self.early.push_back(c);
                    if failed {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn push_flush(&mut self, user_data: u64) -> Result<()> {
        // SAFETY: a flush carries no buffers.
        match unsafe { self.queue.push(Request::Flush, user_data) } {
            Err(Error::QueueFull { .. }) => {
                self.owed_flushes.push_back(user_data);
                Ok(())
            }
            r => r,
        }
    }

    /// qemu-img's `bench_cb` for a finished request or drained flush.
    fn on_done(&mut self, was_flush: bool) -> Result<()> {
        if was_flush {
            self.in_flush = false;
        } else if self.in_flight > 0 {
            let remaining = self.n - self.in_flight;
            self.n -= 1;
            self.in_flight -= 1;
            let interval = self.cfg.flush_interval;
            if interval > 0 && remaining.is_multiple_of(interval) {
                if self.in_flight == 0 || !self.cfg.drain_on_flush {
                    if self.cfg.drain_on_flush {
                        self.in_flush = true;
                        self.push_flush(DRAINED_FLUSH)?;
                    } else {
                        self.push_flush(UNDRAINED_FLUSH)?;
                    }
                }
                if self.cfg.drain_on_flush {
                    return Ok(());
                }
            }
        }
        self.issue()
    }
}

/// Runs the benchmark on `disk` and returns the time from the first
/// request to the last completion.
pub fn run(disk: &dyn BlockBackend, cfg: &BenchConfig) -> Result<Duration> {
    let depth = cfg.depth.min(cfg.count).clamp(1, MAX_BENCH_DEPTH);
    let cfg = &BenchConfig {
        depth,
        ..cfg.clone()
    };
    if u64::from(depth) * u64::from(cfg.buffer_size) > MAX_BUFFER_BYTES {
        return Err(Error::Unsupported {
            what: format!(
                "{depth} buffers of {} bytes exceed the {MAX_BUFFER_BYTES}-byte limit",
                cfg.buffer_size
            ),
        });
    }
    let bufs: Vec<AlignedBuf> = (0..depth)
        .map(|_| {
            let mut b = AlignedBuf::default();
            b.resize(cfg.buffer_size as usize, BUFFER_ALIGN);
            b.as_mut_slice().fill(cfg.pattern);
            b
        })
        .collect();
    let mut queue = disk.open_queue(depth + FLUSH_SLOTS)?;
    let mut bufs = bufs;
    let ranges: Vec<IoBuf> = bufs
        .iter_mut()
        .map(|b| {
            let bytes = b.as_mut_slice();
            IoBuf {
                addr: bytes.as_mut_ptr(),
                len: bytes.len(),
            }
        })
        .collect();
    // SAFETY: the buffers live in `run.bufs`, declared after `run.queue`,
    // so they are dropped after the queue; they are never reallocated.
    unsafe { queue.register_memory(&ranges) };
    let mut run = Run {
        cfg,
        completes_on_push: queue.completes_on_push(),
        queue,
        size: disk.size(),
        n: cfg.count,
        in_flight: 0,
        in_flush: false,
        offset: cfg.offset,
        bufs,
        free_bufs: (0..depth as usize).rev().collect(),
        owed_flushes: VecDeque::new(),
        early: VecDeque::new(),
    };
    let start = Instant::now();
    let result = drive(&mut run);
    let elapsed = start.elapsed();
    // Let everything still in flight (flushes) finish before the buffers
    // go away, whatever happened.
    while run.queue.in_flight() > 0 {
        if run.queue.wait().is_err() {
            break;
        }
        while run.queue.pop_completion().is_some() {}
    }
    result.map(|()| elapsed)
}

fn drive(run: &mut Run<'_>) -> Result<()> {
    run.issue()?;
    run.queue.submit()?;
    while run.n > 0 {
        let mut progressed = false;
        while let Some(c) = run.early.pop_front().or_else(|| run.queue.pop_completion()) {
            progressed = true;
            c.result?;
            match c.user_data {
                UNDRAINED_FLUSH => {}
                DRAINED_FLUSH => run.on_done(true)?,
                index => {
                    run.free_bufs.push(index as usize);
                    run.on_done(false)?;
                }
            }
            while let Some(&ud) = run.owed_flushes.front() {
                // SAFETY: a flush carries no buffers.
                match unsafe { run.queue.push(Request::Flush, ud) } {
                    Err(Error::QueueFull { .. }) => break,
                    r => r?,
                }
                run.owed_flushes.pop_front();
            }
        }
        if run.n > 0 && !progressed {
            // Submits what was issued and waits, in one system call.
            run.queue.wait()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open, OpenOptions};

    fn raw_disk(len: usize) -> (tempfile::TempDir, std::sync::Arc<dyn BlockBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let disk = open(&path, &OpenOptions::default()).unwrap();
        (dir, disk)
    }

    #[test]
    fn writes_wrap_around_the_end_of_the_disk() {
        let (dir, disk) = raw_disk(64 * 1024);
        let cfg = BenchConfig {
            count: 40,
            depth: 8,
            write: true,
            pattern: 0x5a,
            offset: 8192,
            flush_interval: 8,
            ..Default::default()
        };
        run(&*disk, &cfg).unwrap();
        disk.close().unwrap();
        let data = std::fs::read(dir.path().join("d.raw")).unwrap();
        // 40 requests of 4 KiB from 8 KiB on a 64 KiB disk cover it all.
        assert!(data.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn a_request_past_the_end_fails_the_run() {
        let (_dir, disk) = raw_disk(10000);
        let cfg = BenchConfig {
            count: 5,
            depth: 2,
            ..Default::default()
        };
        // The third request starts at 8192 and runs past 10000.
        assert!(matches!(
            run(&*disk, &cfg),
            Err(Error::OutOfRange { offset: 8192, .. })
        ));
    }

    #[test]
    fn undrained_flushes_and_deep_queues_complete() {
        let (_dir, disk) = raw_disk(1 << 20);
        let cfg = BenchConfig {
            count: 3000,
            depth: 64,
            write: true,
            flush_interval: 64,
            drain_on_flush: false,
            ..Default::default()
        };
        run(&*disk, &cfg).unwrap();
        let reads = BenchConfig {
            count: 3000,
            depth: 100_000,
            ..Default::default()
        };
        run(&*disk, &reads).unwrap();
    }
}
