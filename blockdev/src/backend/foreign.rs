//! Serving disks of the formats in [`qcow::formats`] (vmdk, vhdx, vpc,
//! vdi, qed). A read's plain data (a range the format maps to bytes as
//! they are in one of its files) goes through the queue's io_uring
//! straight into the guest's buffers ([`super::foreign_reads`]); every
//! other request goes through the format's [`ForeignImage`] (which maps,
//! allocates and reads or writes through its own file handles) on the
//! queue's thread, and completes at once.
//!
//! What goes through the format is copied through a bounce buffer of at
//! most [`MAX_CHUNK`] bytes per step, so a request of any length runs in
//! bounded memory. `cache=none` is served through the page cache (the
//! formats' tables and grains are not O_DIRECT-aligned); flushes and
//! write-through sync the image's files as for the other formats.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use qcow::formats::ForeignImage;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bufs::GuestBufs;
use super::foreign_reads::RingReads;
use crate::disk::{BlockBackend, BlockQueue, Completion, Request};
use crate::error::{Error, Result};

/// Most bytes one step of a request copies through the bounce buffer.
pub const MAX_CHUNK: usize = 1 << 20;

/// Set (to anything), foreign disks read everything through the format on
/// the queue's thread, as before the ring path (for comparing the two).
pub const SYNC_READS_ENV: &str = "VMM_FOREIGN_SYNC_READS";

/// An opened disk of a foreign format, shared by its queues.
pub(crate) struct ForeignDisk {
    /// The image.
    pub image: Box<dyn ForeignImage>,
    /// Refuse writes, discards and write-zeroes.
    pub read_only: bool,
    /// Flush after every write before completing it.
    pub write_through: bool,
    /// Complete flushes without syncing.
    pub ignore_flush: bool,
}

/// A [`BlockBackend`] over a [`ForeignDisk`].
pub(crate) struct ForeignBackend {
    disk: Arc<ForeignDisk>,
}

impl ForeignBackend {
    /// Serves `disk`.
    pub fn new(disk: ForeignDisk) -> ForeignBackend {
        ForeignBackend {
            disk: Arc::new(disk),
        }
    }
}

impl BlockBackend for ForeignBackend {
    fn size(&self) -> u64 {
        self.disk.image.virtual_size()
    }

    fn read_only(&self) -> bool {
        self.disk.read_only
    }

    fn block_size(&self) -> u32 {
        512
    }

    fn open_queue(&self, depth: u32) -> Result<Box<dyn BlockQueue>> {
        Ok(Box::new(self.foreign_queue(depth)?))
    }

    fn close(&self) -> Result<()> {
        if !self.disk.read_only {
            self.disk.image.flush()?;
        }
        Ok(())
    }
}

impl ForeignBackend {
    /// A queue of `depth` requests.
    fn foreign_queue(&self, depth: u32) -> Result<ForeignQueue> {
        let depth = depth.clamp(1, super::MAX_QUEUE_DEPTH);
        let ready = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
            op: "eventfd",
            source,
        })?;
        let ring = if std::env::var_os(SYNC_READS_ENV).is_some() {
            None
        } else {
            RingReads::new(&*self.disk.image, depth)
        };
        Ok(ForeignQueue {
            disk: self.disk.clone(),
            depth,
            ready: VecDeque::new(),
            eventfd: ready,
            bounce: Vec::new(),
            ring,
        })
    }
}

/// A queue that serves each request when it is pushed.
struct ForeignQueue {
    disk: Arc<ForeignDisk>,
    depth: u32,
    ready: VecDeque<Completion>,
    eventfd: EventFd,
    /// The bounce buffer, kept between requests (at most [`MAX_CHUNK`]).
    bounce: Vec<u8>,
    /// The ring for reads of plain data, when the image's files can be
    /// read around the format.
    ring: Option<RingReads>,
}

impl ForeignQueue {
    /// Reads the disk bytes `offset..offset + bufs.len()` into `bufs`.
    fn read(&mut self, offset: u64, bufs: &GuestBufs) -> Result<u64> {
        let image = &*self.disk.image;
        let len = bufs.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_CHUNK as u64) as usize;
            self.bounce.resize(n, 0);
            image.read_at(&mut self.bounce[..n], offset + done)?;
            bufs.copy_from(done, &self.bounce[..n]);
            done += n as u64;
        }
        Ok(len)
    }

    /// Writes `bufs` to the disk bytes from `offset`.
    fn write(&mut self, offset: u64, bufs: &GuestBufs) -> Result<u64> {
        let image = &*self.disk.image;
        let len = bufs.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_CHUNK as u64) as usize;
            self.bounce.resize(n, 0);
            bufs.copy_to(done, &mut self.bounce[..n]);
            image.write_at(&self.bounce[..n], offset + done)?;
            done += n as u64;
        }
        self.after_write()?;
        Ok(len)
    }

    /// Writes zeros over the disk bytes `offset..offset + len`.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<u64> {
        let image = &*self.disk.image;
        let chunk = len.min(MAX_CHUNK as u64) as usize;
        self.bounce.clear();
        self.bounce.resize(chunk, 0);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            image.write_at(&self.bounce[..n], offset + done)?;
            done += n as u64;
        }
        self.after_write()?;
        Ok(0)
    }

    fn after_write(&self) -> Result<()> {
        if self.disk.write_through {
            self.disk.image.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<u64> {
        if !self.disk.read_only && !self.disk.ignore_flush {
            self.disk.image.flush()?;
        }
        Ok(0)
    }

    /// Checks that `offset..offset + len` lies within the disk.
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.disk.image.virtual_size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }
}

impl BlockQueue for ForeignQueue {
    unsafe fn push(&mut self, request: Request, user_data: u64) -> Result<()> {
        if self.in_flight() >= self.depth {
            return Err(Error::QueueFull { depth: self.depth });
        }
        let writes = !matches!(request, Request::Read { .. } | Request::Flush);
        if writes && self.disk.read_only {
            return Err(Error::ReadOnly);
        }
        let result = match request {
            Request::Read { offset, bufs } => {
                // SAFETY: the caller promises (push contract) that the
                // buffers are valid and ours until the completion is
                // popped; they are used only within this call.
                let bufs = unsafe { GuestBufs::new(bufs) };
                self.check_range(offset, bufs.len())?;
                if let Some(ring) = &mut self.ring {
                    let image = &*self.disk.image;
                    if let Some(done) = ring.start(image, offset, bufs, user_data, &mut self.bounce)
                    {
                        self.ready.push_back(done);
                    }
                    return Ok(());
                }
                self.read(offset, &bufs)
            }
            Request::Write { offset, bufs } => {
                // SAFETY: as for reads.
                let bufs = unsafe { GuestBufs::new(bufs) };
                self.check_range(offset, bufs.len())?;
                self.write(offset, &bufs)
            }
            Request::Flush => self.flush(),
            // The range's contents no longer matter: keeping them is
            // allowed, and these formats have no cheap way to free a
            // part of a block (QEMU's drivers of them ignore discards).
            Request::Discard { offset, len } => {
                self.check_range(offset, len)?;
                Ok(0)
            }
            Request::WriteZeroes { offset, len, .. } => {
                self.check_range(offset, len)?;
                self.write_zeroes(offset, len)
            }
        };
        self.ready.push_back(Completion { user_data, result });
        Ok(())
    }

    fn submit(&mut self) -> Result<()> {
        if let Some(ring) = &mut self.ring {
            ring.submit()?;
            if !self.ready.is_empty() {
                // Completed without the kernel: wake the loop ourselves.
                ring.notify();
            }
            return Ok(());
        }
        if !self.ready.is_empty() {
            // Wakes an event loop that sleeps on the completion fd.
            self.eventfd.write(1).map_err(|source| Error::Io {
                op: "eventfd write",
                source,
            })?;
        }
        Ok(())
    }

    fn pop_completion(&mut self) -> Option<Completion> {
        if self.ready.is_empty() {
            if let Some(ring) = &mut self.ring {
                ring.reap(&*self.disk.image, &mut self.bounce, &mut self.ready);
            }
        }
        self.ready.pop_front()
    }

    fn wait(&mut self) -> Result<()> {
        // Requests served through the format complete when pushed; reads
        // in the ring complete when the kernel is done.
        if self.ready.is_empty() {
            if let Some(ring) = &mut self.ring {
                ring.wait()?;
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> u32 {
        self.ready.len() as u32 + self.ring.as_ref().map_or(0, RingReads::in_flight)
    }

    fn completes_on_push(&self) -> bool {
        // Requests served through the format run within push.
        true
    }

    fn completions_ready(&mut self) -> bool {
        !self.ready.is_empty() || self.ring.as_mut().is_some_and(RingReads::completions_ready)
    }

    fn completion_fd(&self) -> RawFd {
        match &self.ring {
            Some(ring) => ring.completion_fd(),
            None => self.eventfd.as_raw_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::sync::Arc;

    use qcow::formats::dir_files::DirFiles;
    use qcow::formats::vmdk::create::{create, CreateOptions, Subformat};

    use super::{ForeignBackend, ForeignDisk, ForeignQueue};
    use crate::backend::{open, OpenOptions};
    use crate::disk::{BlockBackend, BlockQueue, IoBuf, Request};

    /// A new monolithicSparse vmdk of `size` bytes at `path`.
    fn sparse_vmdk(path: &Path, size: u64) {
        let file = std::fs::File::create_new(path).unwrap();
        let storage = qcow::FileStorage::new(file);
        create(
            &storage,
            size,
            &CreateOptions::default(),
            &DirFiles::for_image(path),
            0x1234,
        )
        .unwrap();
    }

    #[test]
    fn a_vmdk_takes_writes_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vmdk");
        sparse_vmdk(&path, 4 << 20);
        let disk = open(&path, &OpenOptions::default()).unwrap();
        assert_eq!(disk.size(), 4 << 20);
        let mut queue = disk.open_queue(4).unwrap();
        let mut data = vec![7u8; 8192];
        let write = Request::Write {
            offset: 65536 - 4096,
            bufs: vec![IoBuf {
                addr: data.as_mut_ptr(),
                len: data.len(),
            }],
        };
        // SAFETY: `data` outlives the request, whose completion is popped
        // below.
        unsafe { queue.push(write, 1) }.unwrap();
        queue.submit().unwrap();
        let done = queue.pop_completion().unwrap();
        assert_eq!((done.user_data, done.result.unwrap()), (1, 8192));
        let mut back = vec![0u8; 16384];
        let read = Request::Read {
            offset: 65536 - 8192,
            bufs: vec![IoBuf {
                addr: back.as_mut_ptr(),
                len: back.len(),
            }],
        };
        // SAFETY: as above.
        unsafe { queue.push(read, 2) }.unwrap();
        unsafe { queue.push(Request::Flush, 3) }.unwrap();
        queue.submit().unwrap();
        // The flush completes at once; the read, part of it in the ring,
        // when the kernel is done (completions come in any order).
        let mut done = Vec::new();
        while done.len() < 2 {
            match queue.pop_completion() {
                Some(c) => done.push((c.user_data, c.result.unwrap())),
                None => queue.wait().unwrap(),
            }
        }
        done.sort();
        assert_eq!(done, [(2, 16384), (3, 0)]);
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..12288].iter().all(|&b| b == 7));
        assert!(back[12288..].iter().all(|&b| b == 0));
        drop(queue);
        disk.close().unwrap();
    }

    /// Opens the vmdk at `path` for writing, as the block engine does.
    fn vmdk_backend(path: &Path) -> ForeignBackend {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let storage: Arc<dyn qcow::storage::Storage> = Arc::new(qcow::FileStorage::new(file));
        let image = qcow::formats::open("vmdk", storage, true, &DirFiles::for_image(path))
            .unwrap()
            .unwrap();
        ForeignBackend::new(ForeignDisk {
            image,
            read_only: false,
            write_through: false,
            ignore_flush: false,
        })
    }

    fn buf(data: &mut [u8]) -> Vec<IoBuf> {
        vec![IoBuf {
            addr: data.as_mut_ptr(),
            len: data.len(),
        }]
    }

    /// Pushes `request`, waits for it and returns its result.
    fn serve(queue: &mut ForeignQueue, request: Request, user_data: u64) -> u64 {
        // SAFETY: the buffers named by `request` outlive this call, which
        // pops the request's completion before it returns.
        unsafe { queue.push(request, user_data) }.unwrap();
        queue.submit().unwrap();
        loop {
            if let Some(done) = queue.pop_completion() {
                assert_eq!(done.user_data, user_data);
                return done.result.unwrap();
            }
            queue.wait().unwrap();
        }
    }

    /// Reads of allocated grains and of a flat extent go through the
    /// ring straight into the caller's buffer; unallocated grains and the part of a request across them read through the
    /// format, and the whole reads back what was written.
    #[test]
    fn reads_of_plain_data_go_through_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        for (name, subformat) in [
            ("sparse.vmdk", Subformat::MonolithicSparse),
            ("flat.vmdk", Subformat::TwoGbMaxExtentFlat),
        ] {
            let path = dir.path().join(name);
            let file = std::fs::File::create_new(&path).unwrap();
            let options = CreateOptions {
                subformat,
                ..CreateOptions::default()
            };
            create(
                &qcow::FileStorage::new(file),
                8 << 20,
                &options,
                &DirFiles::for_image(&path),
                0x1234,
            )
            .unwrap();
            let backend = vmdk_backend(&path);
            let mut queue = backend.foreign_queue(8).unwrap();
            assert!(queue.ring.is_some(), "{name}: no ring");
            // Data in two grains, a hole between.
            let mut a = vec![0x11u8; 65536 + 4096];
            let mut b = vec![0x22u8; 8192];
            let written = serve(
                &mut queue,
                Request::Write {
                    offset: 0,
                    bufs: buf(&mut a),
                },
                1,
            );
            assert_eq!(written, a.len() as u64);
            let at = 3 << 20;
            serve(
                &mut queue,
                Request::Write {
                    offset: at,
                    bufs: buf(&mut b),
                },
                2,
            );
            let before = queue.ring.as_ref().unwrap().ring_ops();
            let mut back = vec![0xeeu8; (at + 8192 + 4096) as usize];
            let read = Request::Read {
                offset: 0,
                bufs: buf(&mut back),
            };
            assert_eq!(serve(&mut queue, read, 3), back.len() as u64);
            let ring_ops = queue.ring.as_ref().unwrap().ring_ops() - before;
            // The sparse extent's two runs of grains are two operations;
            // the flat extent's file is read whole, holes and all (its
            // holes read as zeros), without asking where they are.
            let least = match subformat {
                Subformat::TwoGbMaxExtentFlat => 1,
                _ => 2,
            };
            assert!(ring_ops >= least, "{name}: {ring_ops} ring operations");
            let mut want = vec![0u8; back.len()];
            want[..a.len()].fill(0x11);
            want[at as usize..at as usize + 8192].fill(0x22);
            assert!(back == want, "{name}: read back differs");
            serve(&mut queue, Request::Flush, 4);
            assert_eq!(queue.in_flight(), 0);
            drop(queue);
            backend.close().unwrap();
        }
    }

    /// With the ring turned off (or for requests with no plain data) the
    /// reads complete at push, as before.
    #[test]
    fn a_read_of_holes_alone_completes_at_push() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vmdk");
        sparse_vmdk(&path, 4 << 20);
        let backend = vmdk_backend(&path);
        let mut queue = backend.foreign_queue(4).unwrap();
        let mut back = vec![0xeeu8; 65536];
        // SAFETY: `back` outlives the request, popped below.
        unsafe {
            queue.push(
                Request::Read {
                    offset: 0,
                    bufs: buf(&mut back),
                },
                9,
            )
        }
        .unwrap();
        let done = queue.pop_completion().unwrap();
        assert_eq!((done.user_data, done.result.unwrap()), (9, 65536));
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(queue.ring.as_ref().unwrap().ring_ops(), 0);
    }
}
