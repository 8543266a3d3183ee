//! Threads started ahead of their work. A migration's destination makes
//! its KVM VM while RAM arrives ([`crate::kvm_shell`]); it starts the
//! vCPU threads and the device thread then too, each waiting for the
//! one job it will run, so that the switch (the source paused) hands
//! them their work instead of creating threads (a clone, a stack mapped,
//! the scheduler's first run: tens of microseconds each on a quiet host,
//! milliseconds on a loaded one).

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A started thread waiting for its one job; dropped without one, it
/// ends at once.
pub struct ReadyThread {
    job: mpsc::SyncSender<Job>,
    handle: JoinHandle<()>,
}

impl ReadyThread {
    /// Starts a thread named `name` that waits for its job.
    pub fn spawn(name: &str) -> Result<ReadyThread> {
        let (job, waiting) = mpsc::sync_channel::<Job>(1);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // No job (the sender dropped): nothing to do.
                if let Ok(job) = waiting.recv() {
                    job();
                }
            })
            .map_err(|source| Error::Io {
                what: format!("starting thread {name} ahead"),
                source,
            })?;
        Ok(ReadyThread { job, handle })
    }

    /// Hands the thread `job`; returns its handle (the job's end is the
    /// thread's end).
    pub fn run(self, job: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
        self.job
            .send(Box::new(job))
            .map_err(|_| Error::GuestFault("a thread started ahead is gone".into()))?;
        Ok(self.handle)
    }
}

/// Runs `job` on `ready` if given, else on a new thread named `name`.
pub fn run_on(
    ready: Option<ReadyThread>,
    name: &str,
    job: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    match ready {
        Some(thread) => thread.run(job),
        None => std::thread::Builder::new()
            .name(name.to_string())
            .spawn(job)
            .map_err(|source| Error::Io {
                what: format!("starting thread {name}"),
                source,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_thread_runs_its_job_and_ends_without_one() {
        let thread = ReadyThread::spawn("test-ready").unwrap();
        let (tx, rx) = mpsc::channel();
        let handle = thread
            .run(move || {
                tx.send(std::thread::current().name().map(str::to_string))
                    .unwrap()
            })
            .unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("test-ready"));
        handle.join().unwrap();

        // Dropped with no job: its thread ends (the handle is gone with
        // it, so watch for the end through a channel the thread holds).
        let unused = ReadyThread::spawn("test-unused").unwrap();
        let handle_done = {
            let ReadyThread { job, handle } = unused;
            drop(job);
            handle
        };
        handle_done.join().unwrap();

        let fresh = run_on(None, "test-fresh", || ()).unwrap();
        assert_eq!(fresh.thread().name(), Some("test-fresh"));
        fresh.join().unwrap();
    }
}
