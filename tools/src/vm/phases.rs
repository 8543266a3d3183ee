//! A command's phase log: with `VM_PHASES=1` in its environment, `vm`
//! prints on stderr where a command's time went, phase by phase (each
//! from the end of the last), as the VMM logs a revert's phases, then
//! the process's own figures: its CPU time and its time waiting for a
//! CPU, its page faults (major ones read the program or data from
//! storage) and blocks read, and, when its spawner put the spawn's
//! CLOCK_MONOTONIC reading in `VM_PHASES_SPAWNED_NS`, the time from the
//! spawn to the command's start and to its end (exec, the dynamic loader
//! and `main` before the first phase). For measuring (`bench/state.sh`);
//! off, it costs a clock read per phase.

use std::time::{Duration, Instant};

use super::sys::{self, Usage};

/// The environment variable that turns the phase log on.
pub const PHASES_ENV: &str = "VM_PHASES";

/// The environment variable holding the spawner's CLOCK_MONOTONIC
/// reading (ns) just before it spawned us.
pub const SPAWNED_ENV: &str = "VM_PHASES_SPAWNED_NS";

/// The phases of one command, timed from its start.
#[derive(Debug)]
pub struct PhaseLog {
    command: &'static str,
    start: Instant,
    mark: Instant,
    laps: Vec<(&'static str, Duration)>,
    on: bool,
    /// CLOCK_MONOTONIC (ns) at the start, when on.
    start_ns: u64,
}

impl PhaseLog {
    /// Starts timing `command`; it prints only when [`PHASES_ENV`] is
    /// set to anything but empty or `0`.
    pub fn new(command: &'static str) -> PhaseLog {
        let on = std::env::var_os(PHASES_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        let now = Instant::now();
        PhaseLog {
            command,
            start: now,
            mark: now,
            laps: Vec::new(),
            on,
            start_ns: if on { sys::monotonic_ns() } else { 0 },
        }
    }

    /// Ends phase `phase` now.
    pub fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.laps.push((phase, now - self.mark));
        self.mark = now;
    }

    /// The log's line: `vm: COMMAND: PHASE X.X ms, ...; Y.Y ms in all`.
    pub fn line(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(phase, spent)| format!("{phase} {:.1} ms", ms(*spent)))
            .collect();
        format!(
            "vm: {}: {}; {:.1} ms in all",
            self.command,
            parts.join(", "),
            ms(self.mark - self.start)
        )
    }

    /// Prints [`PhaseLog::line`] and the process's figures
    /// ([`process_figures`]) on stderr if the log is on.
    pub fn report(&self) {
        if !self.on {
            return;
        }
        let end_ns = sys::monotonic_ns();
        let spawned = std::env::var(SPAWNED_ENV)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&spawned| spawned <= self.start_ns)
            .map(|spawned| {
                (
                    Duration::from_nanos(self.start_ns - spawned),
                    Duration::from_nanos(end_ns.saturating_sub(spawned)),
                )
            });
        let figures = process_figures(sys::usage(), cpu_wait(), spawned);
        eprintln!("{}; {figures}", self.line());
    }
}

/// This process's (main thread's) time runnable but waiting for a CPU
/// (schedstat's second field), if the kernel keeps it.
fn cpu_wait() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let waited: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(waited))
}

/// The process part of the log's line: `spawn to start X ms, to end Y ms;
/// cpu C ms, waiting for a CPU W ms, M major faults, N minor, K KiB read,
/// V waits, P preemptions` (the spawn's part when it is known, the wait's
/// when the kernel keeps it).
pub fn process_figures(
    usage: Usage,
    waited: Option<Duration>,
    spawned: Option<(Duration, Duration)>,
) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut text = String::new();
    if let Some((to_start, to_end)) = spawned {
        text.push_str(&format!(
            "spawn to start {:.1} ms, to end {:.1} ms; ",
            ms(to_start),
            ms(to_end)
        ));
    }
    text.push_str(&format!("cpu {:.1} ms", ms(usage.cpu)));
    if let Some(waited) = waited {
        text.push_str(&format!(", waiting for a CPU {:.1} ms", ms(waited)));
    }
    text.push_str(&format!(
        ", {} major faults, {} minor, {} KiB read, {} waits, {} preemptions",
        usage.major_faults,
        usage.minor_faults,
        usage.blocks_read / 2,
        usage.voluntary_switches,
        usage.involuntary_switches
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_each_phase_in_order_and_the_total() {
        let mut log = PhaseLog::new("snapshot-revert");
        log.lap("lookup");
        std::thread::sleep(Duration::from_millis(2));
        log.lap("vm.restore");
        let line = log.line();
        assert!(line.starts_with("vm: snapshot-revert: lookup "), "{line}");
        let restore = line.find(", vm.restore ").expect("second phase");
        let total = line.find(" ms in all").expect("total");
        assert!(restore < total, "{line}");
        let restore_ms: f64 = line[restore + 13..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(restore_ms >= 2.0, "{line}");
    }

    #[test]
    fn the_process_figures_name_faults_reads_and_the_spawn_when_known() {
        let usage = Usage {
            cpu: Duration::from_micros(2200),
            major_faults: 3,
            minor_faults: 85,
            blocks_read: 24,
            voluntary_switches: 4,
            involuntary_switches: 1,
        };
        let spawned = Some((Duration::from_micros(1500), Duration::from_micros(6000)));
        assert_eq!(
            process_figures(usage, Some(Duration::from_micros(300)), spawned),
            "spawn to start 1.5 ms, to end 6.0 ms; cpu 2.2 ms, waiting for a CPU 0.3 ms, \
             3 major faults, 85 minor, 12 KiB read, 4 waits, 1 preemptions"
        );
        assert_eq!(
            process_figures(usage, None, None),
            "cpu 2.2 ms, 3 major faults, 85 minor, 12 KiB read, 4 waits, 1 preemptions"
        );
        // This process's own figures are read without error.
        let own = sys::usage();
        assert!(own.minor_faults > 0, "{own:?}");
        assert!(sys::monotonic_ns() > 0);
    }
}
