//! Reading the counting guest's serial log (`guest.mode=count`): its
//! counts, the check that they go up by one, and waiting for a count.
//! Shared by the VMM's tests and `vm`'s (tools/tests/support includes it).

use std::path::Path;
use std::time::{Duration, Instant};

/// The counts of `guest: count N` lines in `log`, in order.
pub fn counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("guest: count "))
        .filter_map(|k| k.trim().parse().ok())
        .collect()
}

/// Fails unless `counts` go up by one from their first (no gap, no
/// repeat); `what` names the run in the message.
pub fn assert_consecutive(counts: &[u64], what: &str) {
    for pair in counts.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: a gap or a repeat in {counts:?}"
        );
    }
}

/// The log file `log` from byte `from`, once that part holds a count of
/// at least `at_least`; fails after a minute with what it holds and
/// `context()` (a VMM's log, say).
pub fn wait_count(log: &Path, from: usize, at_least: u64, context: impl Fn() -> String) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail = text.get(from..).unwrap_or_default().to_string();
        if counts(&tail).last().is_some_and(|&k| k >= at_least) {
            return tail;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no count {at_least} in {} from byte {from}: {tail:?}\n{}",
            log.display(),
            context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
