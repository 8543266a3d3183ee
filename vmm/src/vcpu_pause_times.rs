//! When each vCPU left the guest for a pause, and how many kicks it took:
//! what decides a pause's length on a host where a vCPU can stay in the
//! guest long after its kick (see README, `bench/migrate.sh`).
//!
//! The vCPU threads note the moment their KVM_RUN returned once the
//! controller wants them out (one atomic load per exit otherwise, a clock
//! read only then); the controller sums a pause up as [`PauseTimes`].
//! With `VMM_PAUSE_TRACE=1` in the environment every pause also prints,
//! on stderr, each kick and each vCPU's leaving exit: what it left on
//! (the kick's signal, or an exit of its own), its RIP and privilege
//! level (read by ioctl after it is counted out, so outside the pause's
//! time).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a vCPU's leaving KVM_RUN ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOn {
    /// Interrupted by the kick's signal (EINTR).
    Kick,
    /// An exit of the guest's own (port, MMIO, ...), or the thread was
    /// out of the guest already when the pause began.
    OwnExit,
}

/// One pause summed up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseTimes {
    /// Kick rounds sent (each signals every vCPU still running).
    pub kicks: u32,
    /// The last vCPU out of the guest: its id and when, from the pause's
    /// start (None when none left the guest for this pause: all parked
    /// or ended before).
    pub last_out: Option<(usize, Duration)>,
    /// Whether that vCPU left on the kick's signal.
    pub last_kicked: bool,
}

impl std::fmt::Display for PauseTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rounds = if self.kicks == 1 { "kick" } else { "kicks" };
        match self.last_out {
            Some((id, after)) => write!(
                f,
                "{} {rounds}, last vCPU out {:.3} ms after the start (vcpu{id}, {})",
                self.kicks,
                after.as_secs_f64() * 1000.0,
                if self.last_kicked {
                    "on the kick"
                } else {
                    "on an exit of its own"
                }
            ),
            None => write!(f, "{} {rounds}, no vCPU was in the guest", self.kicks),
        }
    }
}

/// Whether `VMM_PAUSE_TRACE` asks for a line per kick and per leaving
/// vCPU (read once).
pub fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("VMM_PAUSE_TRACE").is_some_and(|v| v == "1"))
}

/// `VMM_PAUSE_TRACE`'s line for a pause that ended after `took`: its
/// [`PauseTimes`] and each vCPU thread's time on a CPU and waiting for
/// one since the pause began (whether a slow one was in the guest or
/// waiting).
pub(crate) fn trace_paused(
    sched: &crate::migration::sched::WindowClocks,
    took: Duration,
    times: &PauseTimes,
) {
    let threads = sched
        .since_start()
        .iter()
        .map(|(name, t)| {
            format!(
                "{name} ran {:.3} ms, waited {:.3} ms",
                t.ran.as_secs_f64() * 1000.0,
                t.waited.as_secs_f64() * 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "vmm: pause trace: paused in {:.3} ms: {times}; {threads}",
        took.as_secs_f64() * 1000.0
    );
}

/// Nanoseconds since an epoch, 0 meaning "not yet"; one slot per vCPU.
pub(crate) struct PauseClock {
    epoch: Instant,
    /// The current pause's start.
    started: AtomicU64,
    /// Each vCPU's leaving exit in the current pause (+1 when on a kick,
    /// the low bit: times are kept even).
    out: Vec<AtomicU64>,
    kicks: AtomicU32,
}

impl PauseClock {
    pub(crate) fn new(vcpus: usize) -> Self {
        PauseClock {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            out: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            kicks: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        // Even and never 0: the low bit says how the vCPU left.
        ((self.epoch.elapsed().as_nanos() as u64) | 1) + 1
    }

    /// A new pause begins: forgets the last one's marks. Called before
    /// the threads are told to leave.
    pub(crate) fn start(&self) {
        for slot in &self.out {
            slot.store(0, Ordering::Relaxed);
        }
        self.kicks.store(0, Ordering::Relaxed);
        self.started.store(self.now(), Ordering::Release);
    }

    /// A kick round was sent; its time from the pause's start.
    pub(crate) fn kicked(&self) -> Duration {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.since_start(self.now())
    }

    /// vCPU `id`'s KVM_RUN returned for the current pause (only its first
    /// note counts); its time from the pause's start when this was it.
    pub(crate) fn note_out(&self, id: usize, left: LeftOn) -> Option<Duration> {
        let now = self.now() + u64::from(left == LeftOn::Kick);
        let slot = self.out.get(id)?;
        slot.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| self.since_start(now))
    }

    fn since_start(&self, stamp: u64) -> Duration {
        let started = self.started.load(Ordering::Acquire);
        Duration::from_nanos((stamp & !1).saturating_sub(started))
    }

    /// When vCPU `id` left the guest in the current pause, from its
    /// start, and whether on the kick.
    pub(crate) fn out_of(&self, id: usize) -> Option<(Duration, LeftOn)> {
        let stamp = self.out.get(id)?.load(Ordering::Acquire);
        let left = if stamp & 1 == 1 {
            LeftOn::Kick
        } else {
            LeftOn::OwnExit
        };
        (stamp != 0).then(|| (self.since_start(stamp), left))
    }

    /// The current pause summed up.
    pub(crate) fn times(&self) -> PauseTimes {
        let last = self
            .out
            .iter()
            .enumerate()
            .map(|(id, slot)| (id, slot.load(Ordering::Acquire)))
            .filter(|&(_, stamp)| stamp != 0)
            .max_by_key(|&(_, stamp)| stamp & !1);
        PauseTimes {
            kicks: self.kicks.load(Ordering::Relaxed),
            last_out: last.map(|(id, stamp)| (id, self.since_start(stamp))),
            last_kicked: last.is_some_and(|(_, stamp)| stamp & 1 == 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_vcpu_out_and_how_it_left_are_kept() {
        let clock = PauseClock::new(3);
        clock.start();
        assert_eq!(clock.times().last_out, None);
        clock.kicked();
        assert!(clock.note_out(0, LeftOn::OwnExit).is_some());
        std::thread::sleep(Duration::from_millis(2));
        clock.kicked();
        let second = clock.note_out(2, LeftOn::Kick).unwrap();
        // Only a vCPU's first exit in a pause counts.
        assert!(clock.note_out(2, LeftOn::OwnExit).is_none());
        let times = clock.times();
        assert_eq!(times.kicks, 2);
        assert_eq!(times.last_out, Some((2, second)));
        assert!(times.last_kicked);
        assert_eq!(clock.out_of(2), Some((second, LeftOn::Kick)));
        assert!(matches!(clock.out_of(0), Some((_, LeftOn::OwnExit))));
        assert_eq!(clock.out_of(1), None);
        assert!(second >= Duration::from_millis(2));
        // An id past the set is ignored, not a panic.
        assert!(clock.note_out(7, LeftOn::Kick).is_none());
        // The next pause starts clean.
        clock.start();
        assert_eq!(clock.times(), PauseTimes::default());
        assert_eq!(
            PauseTimes::default().to_string(),
            "0 kicks, no vCPU was in the guest"
        );
    }
}
