//! The scheduling of the threads of a migration's paused window.
//!
//! - [`ThreadClock`], [`WindowClocks`]: each thread's time on a CPU and
//!   time spent runnable but waiting for one
//!   (`/proc/self/task/TID/schedstat`), read before the pause and after
//!   the state is sent, so the source's phase log says how much of the
//!   window went to waiting for a CPU rather than to work. The files are
//!   opened before the pause; reading one is a positioned read of three
//!   numbers. A thread already waiting for a CPU when the window starts
//!   has that wait counted when it next runs, so a vCPU's figure may
//!   hold waits from before the pause.
//! - [`RealtimeBoost`]: the window's threads raised to the real-time
//!   class (SCHED_FIFO at its lowest priority) while the guest is paused,
//!   and put back as they were after. On a busy host a thread that is
//!   runnable waits for the time-sharing threads ahead of it, a few
//!   milliseconds each; a real-time thread runs at once. The phase logs
//!   of 20 migrations on this loaded host showed the slow ones slow only
//!   by such waits: the controller, the vCPU to be kicked out and the
//!   device thread to drain, each runnable for up to 24 ms of a window
//!   whose work is 0.5 ms. `VMM_MIGRATION_REALTIME=off` in the VMM's
//!   environment leaves every thread as it is (to compare).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// A thread's scheduling clock: its time on a CPU and its time waiting
/// for one, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedTimes {
    /// Time on a CPU.
    pub ran: Duration,
    /// Time runnable but waiting for a CPU.
    pub waited: Duration,
}

impl SchedTimes {
    /// Parses schedstat's "RUN_NS WAIT_NS SLICES" line.
    fn parse(text: &str) -> Option<SchedTimes> {
        let mut fields = text.split_ascii_whitespace();
        let ran = fields.next()?.parse().ok()?;
        let waited = fields.next()?.parse().ok()?;
        Some(SchedTimes {
            ran: Duration::from_nanos(ran),
            waited: Duration::from_nanos(waited),
        })
    }

    /// What changed from `earlier` to `self`.
    pub fn since(self, earlier: SchedTimes) -> SchedTimes {
        SchedTimes {
            ran: self.ran.saturating_sub(earlier.ran),
            waited: self.waited.saturating_sub(earlier.waited),
        }
    }
}

/// The calling thread's id.
pub fn this_thread() -> libc::pid_t {
    // SAFETY: gettid has no arguments, touches no memory and cannot fail.
    unsafe { libc::gettid() }
}

/// One thread's schedstat file, open.
pub struct ThreadClock {
    /// The thread's name (its `comm`).
    pub name: String,
    /// Its thread id.
    pub tid: libc::pid_t,
    file: File,
}

impl ThreadClock {
    /// The calling thread's clock, named `name`.
    pub fn current(name: &str) -> Option<ThreadClock> {
        let file = File::open("/proc/thread-self/schedstat").ok()?;
        Some(ThreadClock {
            name: name.to_string(),
            tid: this_thread(),
            file,
        })
    }

    /// The clocks of this process's threads whose name starts with
    /// `prefix`, in name order.
    pub fn named(prefix: &str) -> Vec<ThreadClock> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        let mut clocks: Vec<ThreadClock> = tasks
            .filter_map(|task| {
                let dir = task.ok()?.path();
                let tid = dir.file_name()?.to_str()?.parse().ok()?;
                let name = std::fs::read_to_string(dir.join("comm")).ok()?;
                let name = name.trim_end();
                if !name.starts_with(prefix) {
                    return None;
                }
                Some(ThreadClock {
                    name: name.to_string(),
                    tid,
                    file: File::open(dir.join("schedstat")).ok()?,
                })
            })
            .collect();
        clocks.sort_by(|a, b| a.name.cmp(&b.name));
        clocks
    }

    /// The thread's times now (None once it ended or when unreadable).
    pub fn read(&self) -> Option<SchedTimes> {
        let mut buffer = [0u8; 96];
        let len = self.file.read_at(&mut buffer, 0).ok()?;
        SchedTimes::parse(std::str::from_utf8(&buffer[..len]).ok()?)
    }
}

/// The clocks of a window's threads and their times at its start.
pub struct WindowClocks {
    started: Vec<(ThreadClock, SchedTimes)>,
}

impl WindowClocks {
    /// Reads `clocks` now (those unreadable are left out).
    pub fn start(clocks: Vec<ThreadClock>) -> WindowClocks {
        let started = clocks
            .into_iter()
            .filter_map(|clock| {
                let times = clock.read()?;
                Some((clock, times))
            })
            .collect();
        WindowClocks { started }
    }

    /// Each thread's name and its times since the start.
    pub fn since_start(&self) -> Vec<(String, SchedTimes)> {
        self.started
            .iter()
            .filter_map(|(clock, at_start)| {
                Some((clock.name.clone(), clock.read()?.since(*at_start)))
            })
            .collect()
    }
}

/// Threads raised to SCHED_FIFO (priority 1, reset on fork) until
/// [`RealtimeBoost::lower`] or the drop, each then put back to the
/// policy and priority it had. A thread that cannot be raised (no
/// CAP_SYS_NICE, or an RLIMIT_RTPRIO of 0, or a thread gone) is left as
/// it is: the boost only shortens waits, nothing depends on it.
pub struct RealtimeBoost {
    raised: Vec<Raised>,
    /// Threads whose policy [`RealtimeBoost::prepare`] read, not raised
    /// yet.
    prepared: Vec<Raised>,
    /// Why the last thread that could not be raised was not.
    pub refused: Option<std::io::Error>,
    /// Whether [`REALTIME_SWITCH`] turned boosting off.
    off: bool,
}

/// The environment variable that turns the boost off when `off`.
pub const REALTIME_SWITCH: &str = "VMM_MIGRATION_REALTIME";

struct Raised {
    tid: libc::pid_t,
    policy: libc::c_int,
    param: libc::sched_param,
}

/// The real-time priority the window's threads run at: the lowest, above
/// every time-sharing thread and below any real-time one.
const BOOST_PRIORITY: libc::c_int = 1;

impl RealtimeBoost {
    /// No thread raised yet.
    pub fn new() -> RealtimeBoost {
        RealtimeBoost {
            raised: Vec::new(),
            prepared: Vec::new(),
            refused: None,
            off: std::env::var_os(REALTIME_SWITCH).is_some_and(|v| v == "off"),
        }
    }

    /// Reads thread `tid`'s policy and priority now, so that
    /// [`RealtimeBoost::raise`] is one system call (a window's threads are
    /// prepared before the window opens). Whether it could be read.
    pub fn prepare(&mut self, tid: libc::pid_t) -> bool {
        if self
            .raised
            .iter()
            .chain(&self.prepared)
            .any(|r| r.tid == tid)
        {
            return true;
        }
        if self.off {
            self.refused = Some(std::io::Error::other(format!("{REALTIME_SWITCH}=off")));
            return false;
        }
        // SAFETY: sched_getscheduler only reads thread `tid`'s policy.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param the call writes into.
        if policy < 0 || unsafe { libc::sched_getparam(tid, &mut param) } != 0 {
            self.refused = Some(std::io::Error::last_os_error());
            return false;
        }
        self.prepared.push(Raised { tid, policy, param });
        true
    }

    /// Raises thread `tid` (of this process; read now unless
    /// [`RealtimeBoost::prepare`]d); whether it was (or is already, by
    /// this boost).
    pub fn raise(&mut self, tid: libc::pid_t) -> bool {
        if self.raised.iter().any(|r| r.tid == tid) {
            return true;
        }
        if !self.prepare(tid) {
            return false;
        }
        let Some(at) = self.prepared.iter().position(|r| r.tid == tid) else {
            return false;
        };
        let Raised { policy, param, .. } = self.prepared.swap_remove(at);
        let boost = libc::sched_param {
            sched_priority: BOOST_PRIORITY,
        };
        // SAFETY: `boost` is a valid sched_param the call only reads; it
        // changes thread `tid`'s scheduling and nothing else.
        let set = unsafe {
            libc::sched_setscheduler(tid, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &boost)
        };
        if set != 0 {
            self.refused = Some(std::io::Error::last_os_error());
            return false;
        }
        self.raised.push(Raised { tid, policy, param });
        true
    }

    /// Puts thread `tid` back as it was, if raised here.
    pub fn lower(&mut self, tid: libc::pid_t) {
        if let Some(at) = self.raised.iter().position(|r| r.tid == tid) {
            let raised = self.raised.swap_remove(at);
            raised.put_back();
        }
    }

    /// Puts every thread raised here back as it was.
    pub fn lower_all(&mut self) {
        for raised in self.raised.drain(..) {
            raised.put_back();
        }
    }
}

impl Default for RealtimeBoost {
    fn default() -> Self {
        Self::new()
    }
}

impl Raised {
    fn put_back(&self) {
        // SAFETY: `self.param` is the sched_param read from this thread
        // before it was raised; the call only reads it. A thread ended
        // since makes it fail with ESRCH, which leaves nothing to undo.
        unsafe {
            libc::sched_setscheduler(self.tid, self.policy, &self.param);
        }
    }
}

impl Drop for RealtimeBoost {
    fn drop(&mut self) {
        self.lower_all();
    }
}

/// "NAME waited W ms (ran R ms)" for each thread, joined by commas.
pub fn describe(times: &[(String, SchedTimes)]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    times
        .iter()
        .map(|(name, t)| {
            format!(
                "{name} waited {:.1} ms (ran {:.1} ms)",
                ms(t.waited),
                ms(t.ran)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines_parse_and_subtract() {
        let a = SchedTimes::parse("1213967 156138 4\n").unwrap();
        assert_eq!(a.ran, Duration::from_nanos(1_213_967));
        assert_eq!(a.waited, Duration::from_nanos(156_138));
        assert_eq!(SchedTimes::parse("12 x 3"), None);
        assert_eq!(SchedTimes::parse(""), None);
        let b = SchedTimes::parse("2213967 156139 5").unwrap();
        let d = b.since(a);
        assert_eq!(d.ran, Duration::from_millis(1));
        assert_eq!(d.waited, Duration::from_nanos(1));
    }

    #[test]
    fn a_boost_raises_a_thread_and_puts_it_back() {
        let tid = this_thread();
        // SAFETY: sched_getscheduler only reads this thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(tid) };
        let before = policy();
        {
            let mut boost = RealtimeBoost::new();
            // Reading the policy ahead changes nothing.
            if std::env::var_os(REALTIME_SWITCH).is_none() {
                assert!(boost.prepare(tid));
                assert_eq!(policy(), before);
            }
            if !boost.raise(tid) {
                // Not privileged here: nothing changed.
                assert_eq!(policy(), before);
                assert!(boost.refused.is_some());
                return;
            }
            assert_eq!(policy() & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO);
            // A thread started now runs time-shared again.
            let child = std::thread::spawn(|| {
                // SAFETY: as above, for the new thread.
                unsafe { libc::sched_getscheduler(this_thread()) }
            });
            assert_eq!(child.join().unwrap(), libc::SCHED_OTHER);
            // Raised twice, put back once, to where it was.
            assert!(boost.raise(tid));
            boost.lower(tid);
            assert_eq!(policy(), before);
            assert!(boost.raise(tid));
        }
        // Dropped: put back.
        assert_eq!(policy(), before);
    }

    #[test]
    fn this_thread_has_a_clock_that_advances() {
        let clock = ThreadClock::current("test").unwrap();
        let before = clock.read().unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let after = clock.read().unwrap();
        assert!(after.since(before).ran > Duration::ZERO);
    }
}
