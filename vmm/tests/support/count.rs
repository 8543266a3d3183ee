//! Reading the counting guest's serial log (`guest.mode=count`): its
//! counts, the check that they go up by one, and waiting for a count.
//! Shared by the VMM's tests and `vm`'s (tools/tests/support includes it).

use std::path::Path;
use std::time::{Duration, Instant};

/// The line every count is printed on, up to the count.
const COUNT_PREFIX: &str = "guest: count ";

/// The counts of `guest: count N` lines in `log`, in order. Only whole
/// lines count: the guest prints byte by byte, so a log read while it runs,
/// or when a pause fell inside a line, may end in part of one, and a cut
/// `guest: count 1234` would read as 12.
pub fn counts(log: &str) -> Vec<u64> {
    let whole = log.rfind('\n').map_or("", |end| &log[..end]);
    whole
        .lines()
        .filter_map(|l| l.strip_prefix(COUNT_PREFIX))
        .filter_map(|k| k.trim().parse().ok())
        .collect()
}

/// The first whole count a guest prints when it goes on from a pause
/// (resumed, reverted to a snapshot taken then, forked or migrated from
/// it) whose serial log then read `at_pause`: one past the last whole
/// count, or two past it when the pause fell inside a count line (that
/// line's count is then finished by the guest's first bytes, which begin
/// no line of their own and so are no whole count line).
pub fn next_count(at_pause: &str) -> u64 {
    let last = counts(at_pause).last().copied().unwrap_or(0);
    let cut = at_pause.rsplit('\n').next().unwrap_or("");
    let in_count_line =
        !cut.is_empty() && (cut.starts_with(COUNT_PREFIX) || COUNT_PREFIX.starts_with(cut));
    if in_count_line {
        last + 2
    } else {
        last + 1
    }
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

#[cfg(test)]
mod tests {
    use super::{counts, next_count};

    #[test]
    fn a_cut_line_is_not_a_count() {
        let log = "guest: start\r\nguest: count 1233\r\nguest: count 12";
        assert_eq!(counts(log), [1233]);
        assert_eq!(next_count(log), 1235);
        assert_eq!(next_count("guest: count 1233\r\ngues"), 1235);
        assert_eq!(next_count("guest: count 1233\r\nguest: count 1234\r"), 1235);
        assert_eq!(next_count("guest: count 1233\r\n"), 1234);
        // The rest of a cut line begins the next log: no count of its own.
        assert_eq!(counts("34\r\nguest: count 1235\r\n"), [1235]);
    }
}
