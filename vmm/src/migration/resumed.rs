//! The source's end of a committed migration: timing the destination's
//! Resumed without making anyone wait for it.
//!
//! Once the Commit is sent the guest is the destination's, whatever
//! follows; the source only wants the Resumed to say when the guest ran
//! again there (the end of its "pause to resumed" figure). A
//! [`ResumedWatch`] thread, started before the pause and in the
//! real-time class ([`super::sched::RealtimeBoost`]) while it waits, is
//! handed the connection at the Commit: it is blocked reading when the
//! Resumed comes and takes the time as it comes. The controller answers
//! its API caller meanwhile and collects the time afterwards
//! ([`Committed::finish`]); a destination that never answers costs at
//! most [`RESUMED_WAIT`] after the answer, and one that closes the
//! connection nothing.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmapi::MigrationUrl;

use super::sched::{this_thread, RealtimeBoost};
use super::send::SendReport;
use super::stream::{self, Tag};
use super::transport::Connection;
use super::{MigrationError, Result};

/// How long the watch waits for the destination's Resumed.
pub const RESUMED_WAIT: Duration = Duration::from_secs(1);

/// A thread waiting to time the destination's Resumed.
pub struct ResumedWatch {
    start: mpsc::SyncSender<(Connection, u64)>,
    handle: JoinHandle<Option<Instant>>,
}

impl ResumedWatch {
    /// Starts the thread; it waits for [`ResumedWatch::watch`], and ends
    /// at once if the watch is dropped without it.
    pub fn spawn() -> Result<ResumedWatch> {
        let (start, started) = mpsc::sync_channel::<(Connection, u64)>(1);
        let handle = std::thread::Builder::new()
            .name("migration-resumed".into())
            .spawn(move || {
                // Blocked until the Commit, then until the Resumed: in the
                // real-time class it costs nothing and wakes at once.
                let mut boost = RealtimeBoost::new();
                boost.raise(this_thread());
                let (mut reader, mut offset) = started.recv().ok()?;
                reader.set_read_timeout(RESUMED_WAIT).ok()?;
                let frame = stream::read_frame(&mut reader, &mut offset).ok()?;
                let heard = Instant::now();
                (frame.tag == Tag::Resumed).then_some(heard)
            })
            .map_err(MigrationError::io(
                "starting the thread that waits for Resumed",
            ))?;
        Ok(ResumedWatch { start, handle })
    }

    /// Hands the thread `reader` (a handle on it), whose next frame, at
    /// stream offset `offset`, is the Resumed. It cannot fail: it is
    /// called after the Commit, when the migration is done whatever
    /// happens; a handle that cannot be had leaves the Resumed unheard.
    pub fn watch(self, reader: &Connection, offset: u64) -> JoinHandle<Option<Instant>> {
        match reader.try_clone() {
            // A thread that ended early (it could not start) just times
            // nothing.
            Ok(reader) => {
                let _ = self.start.send((reader, offset));
            }
            Err(e) => eprintln!("vmm: the migration's Resumed will not be heard: {e}"),
        }
        self.handle
    }
}

/// A committed migration: the guest is the destination's, whatever
/// follows. Left to do, after the caller answered its own caller:
/// collect the time of the destination's Resumed, which ends the
/// downtime measured here, and print the report.
pub struct Committed {
    /// What the migration measured, the downtime to the Commit sent.
    pub report: SendReport,
    /// Where it went.
    pub url: MigrationUrl,
    paused_at: Instant,
    resumed: JoinHandle<Option<Instant>>,
}

impl Committed {
    /// The migration paused at `paused_at` and committed as `report`
    /// says, `resumed` timing the destination's Resumed.
    pub(super) fn new(
        report: SendReport,
        url: MigrationUrl,
        paused_at: Instant,
        resumed: JoinHandle<Option<Instant>>,
    ) -> Committed {
        Committed {
            report,
            url,
            paused_at,
            resumed,
        }
    }

    /// Waits for the watch (at most [`RESUMED_WAIT`]) and completes the
    /// report with the time the Resumed came, if it did.
    pub fn hear_resumed(self) -> SendReport {
        let mut report = self.report;
        let committed_at = self.paused_at + report.downtime;
        let heard = self.resumed.join().ok().flatten();
        if let Some(at) = heard {
            report.paused.resumed = at.saturating_duration_since(committed_at);
            report.downtime = at.saturating_duration_since(self.paused_at);
        }
        report.resumed_heard = heard.is_some();
        report
    }

    /// Hears the Resumed, then prints the migration's two lines on
    /// stderr: its totals, and its downtime phase by phase.
    pub fn finish(self) {
        let url = self.url.to_string();
        let report = self.hear_resumed();
        eprintln!(
            "vmm: migrated to {url} in {} ms ({:.1} ms of downtime, {} passes, {} MiB of RAM, {} MiB of disk, full pass {} ms)",
            report.total.as_millis(),
            report.downtime.as_secs_f64() * 1e3,
            report.passes,
            report.ram_bytes >> 20,
            report.disk_bytes >> 20,
            report.full_pass.as_millis()
        );
        eprintln!(
            "vmm: the migration's downtime: {:.1} ms from the pause to the guest resumed there{}, {:.3} ms to the state sent (QEMU's measure); {}; before the pause: flush {:.1} ms, disks {} after {:.2} ms",
            report.downtime.as_secs_f64() * 1e3,
            if report.resumed_heard { "" } else { " (not heard: to the Commit)" },
            report.downtime_sent.as_secs_f64() * 1e3,
            report.paused,
            report.flush_before_pause.as_secs_f64() * 1e3,
            if report.idle_seen {
                "idle"
            } else {
                "still busy (paused with requests in flight)"
            },
            report.idle_wait.as_secs_f64() * 1e3
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn report() -> SendReport {
        SendReport {
            downtime: Duration::from_millis(2),
            ..SendReport::default()
        }
    }

    #[test]
    fn the_resumed_is_timed_as_it_comes_and_its_absence_is_told() {
        let (source, mut destination) = UnixStream::pair().unwrap();
        let watch = ResumedWatch::spawn().unwrap();
        let paused_at = Instant::now();
        let handle = watch.watch(&Connection::Unix(source), 100);
        std::thread::sleep(Duration::from_millis(20));
        let mut frame = Vec::new();
        stream::write_frame(&mut frame, Tag::Resumed, &[]).unwrap();
        destination.write_all(&frame).unwrap();
        let sent_at = Instant::now();
        // Collected well after it came: the time is the arrival's.
        std::thread::sleep(Duration::from_millis(50));
        let url = MigrationUrl::parse("unix:/nowhere").unwrap();
        let done = Committed::new(report(), url.clone(), paused_at, handle).hear_resumed();
        assert!(done.resumed_heard);
        assert!(
            done.downtime >= Duration::from_millis(20),
            "{:?}",
            done.downtime
        );
        assert!(
            done.downtime < sent_at.duration_since(paused_at) + Duration::from_millis(40),
            "{:?}",
            done.downtime
        );

        // The destination closes without a Resumed: not heard, the
        // downtime stays at the Commit, and nothing waits for the bound.
        let (source, destination) = UnixStream::pair().unwrap();
        let handle = ResumedWatch::spawn()
            .unwrap()
            .watch(&Connection::Unix(source), 0);
        drop(destination);
        let start = Instant::now();
        let done = Committed::new(report(), url, Instant::now(), handle).hear_resumed();
        assert!(!done.resumed_heard);
        assert_eq!(done.downtime, Duration::from_millis(2));
        assert!(start.elapsed() < RESUMED_WAIT);

        // A watch dropped before the Commit ends its thread.
        drop(ResumedWatch::spawn().unwrap());
    }
}
