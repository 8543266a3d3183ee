//! A command's phase log: with `VM_PHASES=1` in its environment, `vm`
//! prints on stderr where a command's time went, phase by phase (each
//! from the end of the last), as the VMM logs a revert's phases. For
//! measuring (`bench/state.sh`); off, it costs a clock read per phase.

use std::time::{Duration, Instant};

/// The environment variable that turns the phase log on.
pub const PHASES_ENV: &str = "VM_PHASES";

/// The phases of one command, timed from its start.
#[derive(Debug)]
pub struct PhaseLog {
    command: &'static str,
    start: Instant,
    mark: Instant,
    laps: Vec<(&'static str, Duration)>,
    on: bool,
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

    /// Prints [`PhaseLog::line`] on stderr if the log is on.
    pub fn report(&self) {
        if self.on {
            eprintln!("{}", self.line());
        }
    }
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
}
