//! IOPS of the device model: N requests of a fixed size (4 KiB by
//! default) kept D deep through a virtio-blk queue over any backend, with
//! the driver and the device sharing one thread (the driver publishes
//! chains through indirect tables, as Linux does, and kicks by calling the
//! queue handler directly). The driver reaches guest memory through the
//! device's region view rather than vm-memory's generic accessors, so that
//! the guest's share of the time is near what a guest's plain loads and
//! stores cost and the figure is the device's.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Address, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::defs::*;
use super::device::{DeviceOptions, VirtioBlock};
use super::driver::{
    GuestRam, RawDescriptor, SplitQueueDriver, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use super::handler::QueueEvents;
use super::memory::GuestView;
use crate::disk::BlockBackend;
use crate::{Error, Result};

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
    /// Seed of the offset generator.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            requests: 100_000,
            depth: 32,
            request_size: 4096,
            write: false,
            random: true,
            seed: 1,
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
}

const RINGS_BASE: u64 = 0;
const SLOTS_BASE: u64 = 1 << 16;
const SLOT_HEADER: u64 = 64;
const SLOT_STATUS: u64 = 80;
const SLOT_DATA: u64 = 4096;

fn event() -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
        op: "create an eventfd",
        source,
    })
}

fn guest_error(op: &'static str, addr: GuestAddress) -> Error {
    Error::GuestMemory {
        op,
        addr: addr.raw_value(),
    }
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
    let slot_stride = (SLOT_DATA + request_size).next_multiple_of(4096);
    let memory_size = SLOTS_BASE + slot_stride * u64::from(depth);
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
    // The guest's side of memory.
    let guest = GuestView::new(&*mem).ok_or(Error::DeviceState {
        reason: "bench memory is plain",
    })?;
    let mut driver = SplitQueueDriver::new(&guest, GuestAddress(RINGS_BASE), queue_size)?;
    let queue = device.queue_mut(0).ok_or(Error::DeviceState {
        reason: "queue 0 missing",
    })?;
    driver.configure(queue);
    device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let events = QueueEvents {
        notify: event()?,
        interrupt: event()?,
    };
    let mut handlers = device.activate(mem.clone(), vec![events])?;
    let mut handler = handlers.pop().ok_or(Error::DeviceState {
        reason: "no queue activated",
    })?;

    // Each slot: an indirect table of three descriptors, the header, the
    // status byte and the data buffer.
    let request_type = if options.write { REQ_OUT } else { REQ_IN };
    for slot in 0..u64::from(depth) {
        let base = GuestAddress(SLOTS_BASE + slot * slot_stride);
        let data_flags = if options.write { 0 } else { DESC_F_WRITE };
        let table = [
            RawDescriptor {
                addr: base.raw_value() + SLOT_HEADER,
                len: REQUEST_HEADER_SIZE as u32,
                flags: DESC_F_NEXT,
                next: 1,
            },
            RawDescriptor {
                addr: base.raw_value() + SLOT_DATA,
                len: options.request_size,
                flags: data_flags | DESC_F_NEXT,
                next: 2,
            },
            RawDescriptor {
                addr: base.raw_value() + SLOT_STATUS,
                len: 1,
                flags: DESC_F_WRITE,
                next: 0,
            },
        ];
        for (i, desc) in table.iter().enumerate() {
            SplitQueueDriver::write_descriptor_at(
                &guest,
                base.unchecked_add(16 * i as u64),
                *desc,
            )?;
        }
        let fill = vec![slot as u8; request_size as usize];
        let data = base.unchecked_add(SLOT_DATA);
        if !guest.write_bytes(data, &fill) {
            return Err(guest_error("fill a data buffer", data));
        }
    }

    let mut rng = options.seed | 1;
    let mut next_block = 0u64;
    let mut issue = |driver: &mut SplitQueueDriver, slot: u64| -> Result<()> {
        let block = if options.random {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % blocks
        } else {
            let block = next_block;
            next_block = (next_block + 1) % blocks;
            block
        };
        let base = GuestAddress(SLOTS_BASE + slot * slot_stride);
        let mut header = [0u8; REQUEST_HEADER_SIZE];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&(block * request_size / SECTOR_SIZE).to_le_bytes());
        let header_addr = base.unchecked_add(SLOT_HEADER);
        if !guest.write_bytes(header_addr, &header) {
            return Err(guest_error("write a header", header_addr));
        }
        let status_addr = base.unchecked_add(SLOT_STATUS);
        if !guest.write_bytes(status_addr, &[0xff]) {
            return Err(guest_error("reset a status", status_addr));
        }
        // Slot `slot` always uses head descriptor `slot`, written once
        // below (a driver keeps a free list; reusing the same head is the
        // cheapest way to have one).
        driver.stage(&guest, slot as u16, Vec::new())
    };
    for slot in 0..depth {
        let base = SLOTS_BASE + u64::from(slot) * slot_stride;
        driver.write_descriptor(
            &guest,
            slot,
            RawDescriptor {
                addr: base,
                len: 48,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        )?;
    }

    let start = Instant::now();
    let mut issued = 0u64;
    let mut completed = 0u64;
    for slot in 0..u64::from(depth).min(options.requests) {
        issue(&mut driver, slot)?;
        issued += 1;
    }
    driver.set_used_event_on_pop(false);
    while completed < options.requests {
        // The kick: the driver exposes what it staged, the device pops it,
        // and the backend submits it and waits in one call.
        driver.expose(&guest)?;
        handler.process_queue_and_wait()?;
        while let Some(used) = driver.pop_used(&guest)? {
            let slot = u64::from(used.id) % u64::from(depth);
            let status_addr = GuestAddress(SLOTS_BASE + slot * slot_stride + SLOT_STATUS);
            let mut status = [0u8];
            if !guest.read_bytes(status_addr, &mut status) {
                return Err(guest_error("read a status", status_addr));
            }
            if status[0] != STATUS_OK {
                return Err(Error::DeviceState {
                    reason: "a benchmark request failed",
                });
            }
            completed += 1;
            if issued < options.requests {
                issue(&mut driver, slot)?;
                issued += 1;
            }
        }
        // Interrupt on the next completion, as a guest driver asks.
        driver.set_used_event(&guest, driver.last_used())?;
    }
    let elapsed = start.elapsed();
    let _ = handler.take_interrupt()?;
    Ok(BenchReport {
        requests: completed,
        elapsed,
        iops: completed as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}
