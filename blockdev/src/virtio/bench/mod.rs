//! IOPS of the device model: N requests of a fixed size (4 KiB by
//! default) kept D deep through a virtio-blk queue over any backend.
//!
//! The guest (`guest.rs`) publishes chains through indirect tables, as
//! Linux does. By default it shares the device's thread: it calls the
//! queue handler directly (the kick), the backend submits and waits in one
//! system call, and the guest reaps the used ring right after, asking for
//! no interrupts (as Linux's virtio-blk poll queues do). That figure
//! charges the guest's work to the device.
//! With [`BenchOptions::guest_thread`] the guest runs on a thread of its
//! own, as a vCPU does, kicking through the queue's notify eventfd when
//! the device asks for it (event idx) and taking interrupts when it has
//! nothing left to reap, while the device serves its queue on the calling
//! thread as a VMM's device thread does, polling the available ring a
//! little before it sleeps. On a machine with few cores that costs more
//! than it saves (every ring update crosses between cores), but it runs
//! the whole notification protocol under load.
//!
//! This is what `img bench`-style numbers of a backend are compared with:
//! the same backend driven directly versus through the device model.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use blockdev::virtio::bench::{run, BenchOptions};
//! # use blockdev::virtio::testing::{MemDisk, MemDiskOptions};
//! let disk = Arc::new(MemDisk::new(64 << 20, MemDiskOptions::default()));
//! let report = run(disk, &BenchOptions { requests: 100_000, depth: 32, ..Default::default() })?;
//! println!("{:.0} IOPS", report.iops);
//! # Ok::<(), blockdev::Error>(())
//! ```

mod guest;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::device::{DeviceOptions, VirtioBlock};
use super::driver::SplitQueueDriver;
use super::handler::{QueueEvents, QueueHandler};
use crate::disk::BlockBackend;
use crate::{Error, Result};
use guest::{slot_stride, BenchGuest, RINGS_BASE, SLOTS_BASE};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Requests to complete.
    pub requests: u64,
    /// Requests in flight (at most [`QUEUE_MAX_SIZE`]).
    pub depth: u16,
    /// Bytes per request (a multiple of 512, at most [`SIZE_MAX`]).
    pub request_size: u32,
    /// Writes instead of reads.
    pub write: bool,
    /// Random offsets (aligned to the request size) instead of sequential.
    pub random: bool,
    /// Without `random`: requests apart from one another by this many
    /// requests' worth of bytes, wrapping at the end of the disk (1:
    /// sequential; larger strides never merge, as `img bench -S`).
    pub stride: u64,
    /// Seed of the offset generator.
    pub seed: u64,
    /// Run the guest on a thread of its own (see the module doc).
    pub guest_thread: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            requests: 100_000,
            depth: 32,
            request_size: 4096,
            write: false,
            random: true,
            stride: 1,
            seed: 1,
            guest_thread: false,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Requests completed.
    pub requests: u64,
    /// Time from the first submission to the last completion.
    pub elapsed: Duration,
    /// Requests per second.
    pub iops: f64,
    /// Kicks the guest made (notify eventfd writes); 0 for a guest on the
    /// device's thread, which calls the device directly.
    pub kicks: u64,
}

/// How long the guest spins on the used ring before it sleeps until an
/// interrupt, and the device on the available ring before it sleeps until
/// a kick.
const SPIN: Duration = Duration::from_micros(50);
/// Longest sleep of either side before it looks again (a lost wake-up
/// costs this much, never a hang).
const SLEEP_MS: i32 = 100;

/// The bench guest's eventfds: its kicks (the queue's notify eventfd)
/// and the interrupts the bench's device thread raises for it.
struct GuestEvents {
    notify: EventFd,
    interrupt: EventFd,
}

fn event() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
        op: "create an eventfd",
        source,
    })
}

fn clone_event(fd: &EventFd) -> Result<EventFd> {
    fd.try_clone().map_err(|source| Error::Io {
        op: "duplicate an eventfd",
        source,
    })
}

/// Sleep until `fd` is readable or `SLEEP_MS` pass.
fn wait_readable(fd: RawFd) -> Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut poll, 1, SLEEP_MS) };
    if n < 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Io {
                op: "poll an eventfd",
                source,
            });
        }
    }
    Ok(())
}

/// Run the benchmark over `backend`.
pub fn run(backend: Arc<dyn BlockBackend>, options: &BenchOptions) -> Result<BenchReport> {
    let depth = options.depth;
    if depth == 0 || depth > QUEUE_MAX_SIZE {
        return Err(Error::InvalidDeviceOption {
            name: "depth",
            value: u64::from(depth),
        });
    }
    let request_size = u64::from(options.request_size);
    if request_size == 0
        || !request_size.is_multiple_of(SECTOR_SIZE)
        || request_size > u64::from(SIZE_MAX)
    {
        return Err(Error::InvalidDeviceOption {
            name: "request_size",
            value: request_size,
        });
    }
    let blocks = backend.size() / request_size;
    if blocks == 0 {
        return Err(Error::InvalidDeviceOption {
            name: "disk size",
            value: backend.size(),
        });
    }
    let queue_size = depth.next_power_of_two();
    let memory_size = SLOTS_BASE + slot_stride(request_size) * u64::from(depth);
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), memory_size as usize)]).map_err(
            |_| Error::InvalidDeviceOption {
                name: "guest memory size",
                value: memory_size,
            },
        )?,
    );

    let mut device = VirtioBlock::new(
        backend,
        DeviceOptions {
            num_queues: 1,
            queue_size,
            serial: b"bench".to_vec(),
        },
    )?;
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    let wanted = F_VERSION_1 | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC | F_BLK_FLUSH;
    let features = device.device_features() & wanted;
    device.set_driver_features_page(0, features as u32);
    device.set_driver_features_page(1, (features >> 32) as u32);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let driver = SplitQueueDriver::new(&*mem, GuestAddress(RINGS_BASE), queue_size)?;
    let queue = device.queue_mut(0).ok_or(Error::DeviceState {
        reason: "queue 0 missing",
    })?;
    driver.configure(queue);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = QueueEvents { notify: event()? };
    // The guest's end of the notify eventfd, and the interrupt eventfd the
    // bench's device thread raises.
    let guest_events = GuestEvents {
        notify: clone_event(&events.notify)?,
        interrupt: event()?,
    };
    let mut handlers = device.activate(mem.clone(), vec![events])?;
    let mut handler = handlers.pop().ok_or(Error::DeviceState {
        reason: "no queue activated",
    })?;

    let mut guest = BenchGuest::new(&mem, driver, options, blocks)?;
    if options.guest_thread {
        own_thread(&mut guest, handler, guest_events)
    } else {
        same_thread(&mut guest, &mut handler)
    }
}

/// The guest calls the device directly (the kick), and the backend
/// submits and waits in one system call.
fn same_thread(
    guest: &mut BenchGuest<'_>,
    handler: &mut QueueHandler<Arc<GuestMemoryMmap>>,
) -> Result<BenchReport> {
    let start = Instant::now();
    guest.start()?;
    while !guest.done() {
        guest.expose()?;
        handler.process_queue_and_wait()?;
        guest.reap()?;
        // It polls right after each call; interrupts would only be signals
        // nobody takes.
        guest.disable_interrupts()?;
    }
    let elapsed = start.elapsed();
    let _ = handler.take_interrupt()?;
    Ok(report(guest.completed(), elapsed, 0))
}

/// The guest runs on a thread of its own; the device on this one.
fn own_thread(
    guest: &mut BenchGuest<'_>,
    handler: QueueHandler<Arc<GuestMemoryMmap>>,
    events: GuestEvents,
) -> Result<BenchReport> {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (guest_result, device_result) = std::thread::scope(|scope| {
        let guest_side = scope.spawn(|| {
            let result = run_guest(guest, &events, &stop);
            stop.store(true, Ordering::Release);
            // Wake the device if it sleeps.
            let _ = events.notify.write(1);
            result
        });
        let device_result = run_device(handler, &events.interrupt, &stop);
        stop.store(true, Ordering::Release);
        // Wake the guest if it sleeps.
        let _ = events.interrupt.write(1);
        let guest_result = guest_side.join().unwrap_or(Err(Error::DeviceState {
            reason: "the bench guest panicked",
        }));
        (guest_result, device_result)
    });
    let elapsed = start.elapsed();
    device_result?;
    let kicks = guest_result?;
    Ok(report(guest.completed(), elapsed, kicks))
}

fn report(requests: u64, elapsed: Duration, kicks: u64) -> BenchReport {
    BenchReport {
        requests,
        elapsed,
        iops: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        kicks,
    }
}

/// The guest's vCPU: reap, re-issue, kick when asked; with nothing to
/// reap, ask for an interrupt, spin a little, then sleep until it comes.
/// Returns how many kicks it made.
fn run_guest(guest: &mut BenchGuest<'_>, events: &GuestEvents, stop: &AtomicBool) -> Result<u64> {
    let mut kicks = 0;
    guest.start()?;
    if guest.expose()? {
        kick(events)?;
        kicks += 1;
    }
    while !guest.done() {
        if guest.reap()? > 0 {
            if guest.expose()? {
                kick(events)?;
                kicks += 1;
            }
            continue;
        }
        if guest.arm_interrupt()? {
            continue;
        }
        let spin_start = Instant::now();
        let mut came = false;
        while spin_start.elapsed() < SPIN {
            if guest.has_used()? {
                came = true;
                break;
            }
            std::hint::spin_loop();
        }
        if came {
            continue;
        }
        if stop.load(Ordering::Acquire) {
            return Err(Error::DeviceState {
                reason: "the bench device stopped before the guest finished",
            });
        }
        if !guest.has_used()? {
            wait_readable(events.interrupt.as_raw_fd())?;
            let _ = events.interrupt.read();
        }
    }
    Ok(kicks)
}

fn kick(events: &GuestEvents) -> Result<()> {
    events.notify.write(1).map_err(|source| Error::Io {
        op: "kick the queue",
        source,
    })
}

/// The device thread: take what the guest made available, wait for the
/// backend while requests are in flight, sleep until a kick when idle.
/// It polls the available ring, so the guest's kicks stay off until it is
/// about to sleep.
fn run_device(
    mut handler: QueueHandler<Arc<GuestMemoryMmap>>,
    interrupt: &EventFd,
    stop: &AtomicBool,
) -> Result<()> {
    handler.set_polling(true);
    loop {
        handler.process_queue()?;
        raise_if_due(&handler, interrupt)?;
        if handler.in_flight() > 0 {
            handler.wait_and_complete()?;
            raise_if_due(&handler, interrupt)?;
            continue;
        }
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        // Poll the available ring a little before sleeping until a kick.
        let spin_start = Instant::now();
        while !handler.has_available() && spin_start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let came = handler.has_available() || handler.prepare_to_sleep()?;
        raise_if_due(&handler, interrupt)?;
        if came {
            continue;
        }
        wait_readable(handler.notify_fd())?;
        // Drains the notify eventfd and takes what the kick announced.
        handler.handle_queue_notify()?;
        raise_if_due(&handler, interrupt)?;
    }
}

/// Interrupts the bench guest (its end of the interrupt eventfd) if the
/// device decided to, as a VMM's event loop raises its irqfd.
fn raise_if_due(handler: &QueueHandler<Arc<GuestMemoryMmap>>, interrupt: &EventFd) -> Result<()> {
    if handler.take_interrupt()? {
        interrupt.write(1).map_err(|source| Error::Io {
            op: "interrupt the bench guest",
            source,
        })?;
    }
    Ok(())
}
