//! qemu-img's `-p` progress, as QEMU's util/qemu-progress.c prints it:
//! `    (NN.NN/100%)` and a carriage return on stdout, terminal or not,
//! whenever the figure moves by more than the command's minimum step (and
//! always at 0 and 100), then a newline at the end.

use std::io::Write as _;
use std::sync::Mutex;

/// A command's progress figure and when it was last printed.
pub struct Progress {
    enabled: bool,
    min_step: f32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: f32,
    last_printed: f32,
    /// Bytes counted by [`Progress::advance`].
    done: u64,
}

impl Progress {
    /// Progress printed when `enabled`, every `min_step` percent or more
    /// (qemu-img uses 1 for convert and commit, 2 for rebase).
    pub fn new(enabled: bool, min_step: f32) -> Progress {
        Progress {
            enabled,
            min_step,
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the figure to `percent` (clamped to 100) and prints it if it
    /// moved far enough.
    pub fn set(&self, percent: f32) {
        let mut s = self.state.lock().expect("progress lock poisoned");
        self.set_locked(&mut s, percent);
    }

    /// Counts `bytes` more of `total` done (from any thread: the figure
    /// only grows) and sets the figure from the count.
    pub fn advance(&self, bytes: u64, total: u64) {
        let mut s = self.state.lock().expect("progress lock poisoned");
        s.done += bytes;
        let percent = percent_of(s.done, total);
        self.set_locked(&mut s, percent);
    }

    fn set_locked(&self, s: &mut State, percent: f32) {
        s.current = percent.min(100.0);
        if s.current > s.last_printed + self.min_step
            || s.current < s.last_printed - self.min_step
            || s.current == 100.0
            || s.current == 0.0
        {
            s.last_printed = s.current;
            if self.enabled {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "    ({:.2}/100%)\r", s.current);
                let _ = out.flush();
            }
        }
    }

    /// Sets the figure to `done` of `total` as a percentage (0 while there
    /// is nothing to count).
    pub fn set_fraction(&self, done: u64, total: u64) {
        self.set(percent_of(done, total));
    }

    /// Ends the progress line (a closed stdout is ignored, as every
    /// progress write is: the command's work goes on, as qemu-img's does).
    pub fn end(&self) {
        if self.enabled {
            let _ = writeln!(std::io::stdout());
        }
    }
}

/// `done` of `total` in percent; 0 while there is nothing to count.
fn percent_of(done: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (done as f64 * 100.0 / total as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_only_steps_larger_than_the_minimum() {
        let p = Progress::new(false, 1.0);
        let printed = |p: &Progress| p.state.lock().unwrap().last_printed;
        p.set(0.0);
        p.set(0.5);
        assert_eq!(printed(&p), 0.0);
        p.set(1.5);
        assert_eq!(printed(&p), 1.5);
        p.set(2.4);
        assert_eq!(printed(&p), 1.5);
        p.set_fraction(7, 7);
        assert_eq!(printed(&p), 100.0);
        p.set_fraction(0, 0);
        assert_eq!(printed(&p), 0.0);
        p.set_fraction(7, 7);
        assert_eq!(printed(&p), 100.0);
        p.advance(3, 4);
        assert_eq!(printed(&p), 75.0);
        p.set(250.0);
        assert_eq!(p.state.lock().unwrap().current, 100.0);
    }
}
