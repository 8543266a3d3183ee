//! Serving disks of the formats in [`qcow::formats`] (vmdk, vhdx, vpc,
//! vdi, qed): every request goes through the format's [`ForeignImage`]
//! (which maps, allocates and reads or writes through its own file
//! handles) on the queue's thread, and completes at once.
//!
//! These formats are for bringing disks over from other hypervisors, not
//! for speed: QEMU, too, serves them through its generic block layer
//! rather than a fast path. The data is copied through a bounce buffer of
//! at most [`MAX_CHUNK`] bytes per step, so a request of any length runs in
//! bounded memory. `cache=none` is served through the page cache (the
//! formats' tables and grains are not O_DIRECT-aligned); flushes and
//! write-through sync the image's files as for the other formats.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use qcow::formats::ForeignImage;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bufs::GuestBufs;
use crate::disk::{BlockBackend, BlockQueue, Completion, Request};
use crate::error::{Error, Result};

/// Most bytes one step of a request copies through the bounce buffer.
pub const MAX_CHUNK: usize = 1 << 20;

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
        let depth = depth.clamp(1, super::MAX_QUEUE_DEPTH);
        let ready = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
            op: "eventfd",
            source,
        })?;
        Ok(Box::new(ForeignQueue {
            disk: self.disk.clone(),
            depth,
            ready: VecDeque::new(),
            eventfd: ready,
            bounce: Vec::new(),
        }))
    }

    fn close(&self) -> Result<()> {
        if !self.disk.read_only {
            self.disk.image.flush()?;
        }
        Ok(())
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
        if self.ready.len() >= self.depth as usize {
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
        self.ready.pop_front()
    }

    fn wait(&mut self) -> Result<()> {
        // Every request completes when pushed.
        Ok(())
    }

    fn in_flight(&self) -> u32 {
        self.ready.len() as u32
    }

    fn completions_ready(&mut self) -> bool {
        !self.ready.is_empty()
    }

    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qcow::formats::dir_files::DirFiles;
    use qcow::formats::vmdk::create::{create, CreateOptions};

    use crate::backend::{open, OpenOptions};
    use crate::disk::{IoBuf, Request};

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
        let read_done = queue.pop_completion().unwrap();
        assert_eq!(read_done.result.unwrap(), 16384);
        assert_eq!(queue.pop_completion().unwrap().user_data, 3);
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..12288].iter().all(|&b| b == 7));
        assert!(back[12288..].iter().all(|&b| b == 0));
        drop(queue);
        disk.close().unwrap();
    }
}
