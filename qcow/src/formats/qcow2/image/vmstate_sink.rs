//! Where a [`super::vmstate::VmStateWriter`]'s data goes: whole clusters,
//! newly allocated, written once and never read before the snapshot is
//! recorded. A VM state is hundreds of MiB written in one go while the
//! guest waits, so the clusters are written from page-aligned buffers
//! through a second descriptor of the image file opened with O_DIRECT,
//! by [`WRITER_THREADS`] threads, while the caller fills the next buffer:
//! no copy into the page cache (which on a host short of free memory
//! costs more than the disk), and the disk busy all along. The syncs that
//! make the data durable stay the image's (`Storage::flush` syncs the
//! file, whichever descriptor wrote it).
//!
//! Storage that is not a file, a file system that refuses O_DIRECT, or a
//! write it refuses (EINVAL: an alignment it does not take) fall back to
//! the image's own storage, through the page cache. So do clusters
//! smaller than a page: a page of the file would then hold clusters
//! written both ways, and the page cache's copy of it could later be
//! written back over the data written directly.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Bytes of one buffer: one write.
pub const BUFFER_BYTES: usize = 4 << 20;
/// Threads writing buffers at once.
pub const WRITER_THREADS: usize = 2;
/// Buffers in use at most: one per writer, one queued, one being filled.
const BUFFERS: usize = WRITER_THREADS + 2;
/// Alignment of a buffer's memory (O_DIRECT asks for the logical block
/// size at most; a page covers every device), and the smallest cluster
/// written through O_DIRECT.
pub const MEMORY_ALIGN: usize = 4096;

/// A buffer of [`BUFFER_BYTES`] whose first byte is page-aligned (the
/// allocation is one page longer; no unsafe code).
pub struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    fn new() -> AlignedBuffer {
        let bytes = vec![0u8; BUFFER_BYTES + MEMORY_ALIGN];
        let start = bytes.as_ptr().align_offset(MEMORY_ALIGN);
        assert!(start < MEMORY_ALIGN, "a byte pointer can be aligned");
        AlignedBuffer { bytes, start }
    }

    /// The buffer's [`BUFFER_BYTES`] bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + BUFFER_BYTES]
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + BUFFER_BYTES]
    }
}

/// One write: `len` bytes of `buffer` at host offset `host`.
struct Job {
    buffer: AlignedBuffer,
    len: usize,
    host: u64,
}

/// Sends filled buffers to their clusters.
pub struct ClusterSink {
    storage: Arc<dyn Storage>,
    direct: Option<DirectWriters>,
    /// A buffer ready to be filled.
    ready: Option<AlignedBuffer>,
}

/// The O_DIRECT writer threads and their channels.
struct DirectWriters {
    jobs: Option<SyncSender<Job>>,
    /// Buffers written (or the write's error), back for reuse.
    done: Receiver<Result<AlignedBuffer>>,
    /// Buffers handed to the threads and not back yet.
    out: usize,
    /// Buffers made so far.
    made: usize,
    threads: Vec<JoinHandle<()>>,
}

/// A second descriptor of `storage`'s file with O_DIRECT, if it has one
/// and the file system takes it.
fn open_direct(storage: &dyn Storage) -> Option<File> {
    let file = storage.as_file()?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// Writes `job` through `direct`, or through `storage` where O_DIRECT
/// refuses it.
fn write_job(direct: &File, storage: &dyn Storage, job: &Job) -> Result<()> {
    let data = &job.buffer.as_slice()[..job.len];
    match direct.write_all_at(data, job.host) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => storage.write_at(data, job.host),
        Err(e) => Err(Error::io(format!("write at offset {}", job.host), e)),
    }
}

impl ClusterSink {
    /// A sink writing clusters of `cluster_size` bytes into `storage`,
    /// through O_DIRECT threads where it can.
    pub fn new(storage: Arc<dyn Storage>, cluster_size: u64) -> ClusterSink {
        let direct = if cluster_size >= MEMORY_ALIGN as u64 {
            open_direct(&*storage).and_then(|file| DirectWriters::start(file, &storage))
        } else {
            None
        };
        ClusterSink {
            storage,
            direct,
            ready: None,
        }
    }

    /// A buffer to fill: a new one, or one whose write completed (an
    /// earlier write's error comes out here).
    pub fn buffer(&mut self) -> Result<AlignedBuffer> {
        if let Some(buffer) = self.ready.take() {
            return Ok(buffer);
        }
        match &mut self.direct {
            Some(d) if d.made >= BUFFERS => d.wait_one(),
            Some(d) => {
                d.made += 1;
                Ok(AlignedBuffer::new())
            }
            None => Ok(AlignedBuffer::new()),
        }
    }

    /// Writes the first `len` bytes of `buffer` at host offset `host`
    /// (both multiples of the cluster size); with O_DIRECT the write
    /// completes in the background ([`ClusterSink::finish`] waits).
    pub fn write(&mut self, buffer: AlignedBuffer, len: usize, host: u64) -> Result<()> {
        let job = Job { buffer, len, host };
        let Some(d) = &mut self.direct else {
            self.storage.write_at(&job.buffer.as_slice()[..len], host)?;
            self.ready = Some(job.buffer);
            return Ok(());
        };
        let jobs = d.jobs.as_ref().expect("jobs open until finish");
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            // Every writer is gone (one panicked): write here.
            self.storage.write_at(&job.buffer.as_slice()[..len], host)?;
            self.ready = Some(job.buffer);
            return Ok(());
        }
        d.out += 1;
        Ok(())
    }

    /// Waits for every write; the first error of any.
    pub fn finish(&mut self) -> Result<()> {
        let Some(d) = &mut self.direct else {
            return Ok(());
        };
        d.jobs = None;
        let mut first_error = None;
        while d.out > 0 {
            if let Err(e) = d.wait_one() {
                first_error.get_or_insert(e);
            }
        }
        for thread in d.threads.drain(..) {
            let _ = thread.join();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether writes go through O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }
}

impl Drop for ClusterSink {
    fn drop(&mut self) {
        // No write may land after the writer is gone.
        let _ = self.finish();
    }
}

impl DirectWriters {
    fn start(file: File, storage: &Arc<dyn Storage>) -> Option<DirectWriters> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let file = Arc::new(file);
        let mut threads = Vec::new();
        for n in 0..WRITER_THREADS {
            let (queue, done_tx, file, storage) = (
                queue.clone(),
                done_tx.clone(),
                file.clone(),
                storage.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("vm-state-write-{n}"))
                .spawn(move || loop {
                    let job = match queue.lock().map(|q| q.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    let result = write_job(&file, &*storage, &job).map(|()| job.buffer);
                    if done_tx.send(result).is_err() {
                        return;
                    }
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                // No thread at all: write in the caller's thread instead.
                Err(_) if threads.is_empty() => return None,
                Err(_) => break,
            }
        }
        Some(DirectWriters {
            jobs: Some(jobs),
            done,
            out: 0,
            made: 0,
            threads,
        })
    }

    /// The next buffer back from a writer.
    fn wait_one(&mut self) -> Result<AlignedBuffer> {
        let result = self
            .done
            .recv()
            .map_err(|_| Error::Corrupt("the VM-state writer threads stopped".into()))?;
        self.out -= 1;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FileStorage, MemStorage};

    fn fill(sink: &mut ClusterSink, byte: u8) -> AlignedBuffer {
        let mut buffer = sink.buffer().unwrap();
        buffer.as_mut_slice().fill(byte);
        buffer
    }

    #[test]
    fn buffers_are_page_aligned() {
        let mut b = AlignedBuffer::new();
        assert_eq!(b.as_mut_slice().as_ptr() as usize % MEMORY_ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), BUFFER_BYTES);
    }

    #[test]
    fn writes_land_where_asked_through_a_file_or_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let storages: [Arc<dyn Storage>; 2] = [
            Arc::new(FileStorage::new(file)),
            Arc::new(MemStorage::new()),
        ];
        for storage in storages {
            let mut sink = ClusterSink::new(storage.clone(), 65536);
            // More writes than buffers, so that buffers come back for reuse.
            let writes = BUFFERS * 2 + 1;
            for i in 0..writes {
                let buffer = fill(&mut sink, i as u8 + 1);
                let host = (writes - 1 - i) as u64 * 65536;
                sink.write(buffer, 65536, host).unwrap();
            }
            sink.finish().unwrap();
            let mut back = vec![0u8; writes * 65536];
            storage.read_at(&mut back, 0).unwrap();
            for i in 0..writes {
                let at = (writes - 1 - i) * 65536;
                assert!(
                    back[at..at + 65536].iter().all(|&b| b == i as u8 + 1),
                    "write {i}"
                );
            }
        }
    }

    #[test]
    fn a_write_error_comes_out_of_finish() {
        // An offset past any file's largest size: the write fails in a
        // writer thread (or in the caller's, without O_DIRECT), and the
        // error is returned, not lost.
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let mut sink = ClusterSink::new(Arc::new(FileStorage::new(file)), 65536);
        let buffer = fill(&mut sink, 7);
        let written = sink
            .write(buffer, 65536, 1 << 62)
            .and_then(|()| sink.finish());
        assert!(written.is_err());
    }
}
