//! The child of the virtio-blk kill -9 harness (`tests/kill9_virtio.rs`):
//! opens a qcow2 image through blockdev's io_uring backend, puts the
//! virtio-blk device model in front of it, and drives it as a guest
//! would, with blockdev's split-ring driver in guest memory: the requests
//! of `integration_tests::virtio_workload`, up to DEPTH of them in flight,
//! until it is killed.
//!
//! Usage: `virtio_writer IMAGE LOG SEED ROUND CACHE DEPTH MAX_REQUESTS
//! [QUEUES]`, CACHE being `none`, `writeback`, `writethrough` or `directsync` (as
//! QEMU spells them: the last two complete a write only once it is
//! durable).
//!
//! With one queue the writer kicks and waits in one call
//! (`process_queue_and_wait`, as the benchmark does); with several (the
//! device's MQ), each request goes to a random queue and the writer runs
//! them all from one thread as the VMM's device loop does: a kick is
//! `process_queue`, completions come from epoll on the backend queues'
//! eventfds. A watchdog ends the child with status 3 when no request has
//! completed for 5 s (a hang would otherwise only show as a round that
//! stopped early).
//!
//! Requests go out in stream order, several per kick; one that would
//! change a byte a request in flight changes waits until that one has
//! completed (so overlapping requests are ordered, as a guest's block
//! layer keeps them), and so does everything after it.
//!
//! The log gets one line per event, each written with a single `write` on
//! a file opened with `O_APPEND` before the child goes on (a kill -9 loses
//! nothing the kernel already has):
//! - `start N` before request N is put on the available ring;
//! - `completed N` once the used ring returned request N with status OK
//!   (and the driver popped it);
//! - `flushed N` the same for a FLUSH;
//! - `end` after the last request, if the child lives that long.
//!
//! A request that fails, or any other error, is printed and ends the child
//! with status 2.

mod guest;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blockdev::backend::{open, OpenOptions as DiskOptions};
use blockdev::disk::CacheMode;
use blockdev::virtio::defs::*;
use blockdev::virtio::driver::SplitQueueDriver;
use blockdev::virtio::{DeviceOptions, QueueEvents, VirtioBlock};
use integration_tests::virtio_workload::{RequestKind, VirtioRequest, VirtioWorkload};
use integration_tests::workload::mix;
use qcow::fs::Format;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

struct Log(std::fs::File);

impl Log {
    fn line(&mut self, text: std::fmt::Arguments) -> Result<()> {
        // One write per line: the parent never sees half a line but after
        // a kill inside this call, and ignores an unfinished last line.
        self.0
            .write_all(format!("{text}\n").as_bytes())
            .context("writing the log")
    }
}

fn parse<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i)
        .with_context(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {what}: {:?}", args[i]))
}

fn event() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).context("creating an eventfd")
}

fn run(args: &[String]) -> Result<()> {
    let image_path = Path::new(args.get(1).context("missing IMAGE")?);
    let log_path = Path::new(args.get(2).context("missing LOG")?);
    let seed: u64 = parse(args, 3, "SEED")?;
    let round: u32 = parse(args, 4, "ROUND")?;
    let (cache, write_through) = match args.get(5).map(String::as_str) {
        Some("none") => (CacheMode::None, false),
        Some("writeback") => (CacheMode::Writeback, false),
        Some("writethrough") => (CacheMode::Writeback, true),
        Some("directsync") => (CacheMode::None, true),
        other => bail!("bad CACHE {other:?}"),
    };
    let depth: usize = parse(args, 6, "DEPTH")?;
    if depth == 0 || depth > guest::MAX_DEPTH {
        bail!("DEPTH must be 1 to {}", guest::MAX_DEPTH);
    }
    let max_requests: u64 = parse(args, 7, "MAX_REQUESTS")?;
    let queues: u16 = match args.get(8) {
        Some(_) => parse(args, 8, "QUEUES")?,
        None => 1,
    };
    if queues == 0 || queues > guest::MAX_QUEUES {
        bail!("QUEUES must be 1 to {}", guest::MAX_QUEUES);
    }

    let backend = open(
        image_path,
        &DiskOptions {
            format: Some(Format::Qcow2),
            cache,
            write_through,
            ..Default::default()
        },
    )
    .with_context(|| format!("opening {}", image_path.display()))?;
    let size = backend.size();
    let cluster_size = {
        let image = integration_tests::crash::read_qcow2(image_path).map_err(anyhow::Error::msg)?;
        image.cluster_size()
    };
    let mut log = Log(OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?);

    // The device, negotiated and activated as a transport would.
    let mem = Arc::new(guest::memory()?);
    let mut device = VirtioBlock::new(
        backend,
        DeviceOptions {
            num_queues: queues,
            queue_size: guest::QUEUE_SIZE,
            serial: b"kill9".to_vec(),
        },
    )?;
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let wanted = F_VERSION_1
        | F_RING_EVENT_IDX
        | F_RING_INDIRECT_DESC
        | F_BLK_FLUSH
        | F_BLK_DISCARD
        | F_BLK_WRITE_ZEROES;
    let features = device.device_features() & wanted;
    if features != wanted {
        bail!("the device does not offer {:#x}", wanted & !features);
    }
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let mut drivers = Vec::new();
    for queue in 0..queues {
        let driver = SplitQueueDriver::new(&*mem, guest::rings(queue), guest::QUEUE_SIZE)?;
        driver.configure(device.queue_mut(queue).context("a device queue")?);
        drivers.push(driver);
    }
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = (0..queues)
        .map(|_| Ok(QueueEvents { notify: event()? }))
        .collect::<Result<Vec<_>>>()?;
    let mut handlers = device.activate(mem.clone(), events)?;
    if handlers.len() != usize::from(queues) {
        bail!("{} of {queues} queues activated", handlers.len());
    }
    let epoll = Epoll::new().context("epoll")?;
    for (queue, handler) in handlers.iter().enumerate() {
        epoll
            .ctl(
                ControlOperation::Add,
                handler.completion_fd(),
                EpollEvent::new(EventSet::IN, queue as u64),
            )
            .context("epoll_ctl")?;
    }
    let progress = watchdog();

    let mut workload = VirtioWorkload::new(seed, round, cluster_size, size);
    let mut waiting: Option<VirtioRequest> = None;
    // By queue and head index: the request and its slot.
    let mut in_flight: Vec<Vec<Option<(VirtioRequest, usize)>>> = (0..queues)
        .map(|_| (0..guest::QUEUE_SIZE).map(|_| None).collect())
        .collect();
    let mut free_slots: Vec<usize> = (0..depth).rev().collect();
    let mut started = 0u64;
    let mut rng = mix(seed ^ u64::from(round) ^ 0x6b69_636b);
    let mut data = Vec::new();
    let mut ready = vec![EpollEvent::default(); usize::from(queues)];
    loop {
        // Stage a random number of requests, then kick the queues that got
        // some.
        rng = mix(rng);
        let batch = 1 + rng % depth as u64;
        let mut staged = 0;
        let mut kicked = vec![false; usize::from(queues)];
        while staged < batch && started < max_requests && !free_slots.is_empty() {
            let request = waiting.take().unwrap_or_else(|| workload.next_request());
            if in_flight
                .iter()
                .flatten()
                .flatten()
                .any(|(r, _)| r.overlaps(&request))
            {
                waiting = Some(request);
                break;
            }
            rng = mix(rng);
            let queue = (rng % u64::from(queues)) as usize;
            let slot = free_slots.pop().context("a free slot")?;
            log.line(format_args!("start {}", request.index))?;
            let head = guest::submit(
                &mem,
                &mut drivers[queue],
                slot,
                &request,
                seed,
                round,
                &mut data,
            )?;
            in_flight[queue][usize::from(head)] = Some((request, slot));
            kicked[queue] = true;
            started += 1;
            staged += 1;
        }
        if in_flight.iter().flatten().all(Option::is_none) {
            break;
        }
        if queues == 1 {
            handlers[0].process_queue_and_wait()?;
        } else {
            for (queue, handler) in handlers.iter_mut().enumerate() {
                if kicked[queue] {
                    handler.process_queue()?;
                }
            }
            let n = match epoll.wait(1000, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for event in &ready[..n] {
                handlers[event.data() as usize].handle_completion_event()?;
            }
        }
        for (queue, driver) in drivers.iter_mut().enumerate() {
            while let Some(used) = driver.pop_used(&*mem)? {
                let (request, slot) = in_flight[queue]
                    .get_mut(used.id as usize)
                    .and_then(Option::take)
                    .with_context(|| format!("queue {queue} returned head {} twice", used.id))?;
                let status = guest::status(&mem, slot)?;
                if status != STATUS_OK {
                    bail!(
                        "request {} ({request:?}) failed: status {status}",
                        request.index
                    );
                }
                let what = if request.kind == RequestKind::Flush {
                    "flushed"
                } else {
                    "completed"
                };
                log.line(format_args!("{what} {}", request.index))?;
                progress.fetch_add(1, Ordering::Relaxed);
                free_slots.push(slot);
            }
        }
    }
    drop(handlers);
    device.backend().close()?;
    log.line(format_args!("end"))?;
    Ok(())
}

/// Starts the watchdog: it ends the process with status 3 when the
/// returned counter (of completed requests) has not moved for 5 s.
fn watchdog() -> Arc<AtomicU64> {
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let now = seen.load(Ordering::Relaxed);
            if now == last {
                eprintln!("virtio_writer: no request completed for 5 s after {now}: stuck");
                std::process::exit(3);
            }
            last = now;
        }
    });
    progress
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = run(&args) {
        eprintln!("virtio_writer: {e:#}");
        std::process::exit(2);
    }
}
