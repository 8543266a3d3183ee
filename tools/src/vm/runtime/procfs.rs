//! What /proc says about a VMM process: whether it is still the process we
//! started (not a zombie, not a reused pid), its CPU times, its vCPU
//! threads and its resident memory; and the signals we send it.

use std::fs;
use std::time::{Duration, Instant};

/// A process we started: its pid and its start time (clock ticks after
/// boot, /proc/PID/stat field 22), which together name it uniquely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot.
    pub start_time: u64,
}

/// Fields of /proc/PID/stat or /proc/PID/task/TID/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    /// Process state letter (R, S, D, Z, ...).
    pub state: char,
    /// User time in clock ticks.
    pub utime: u64,
    /// System time in clock ticks.
    pub stime: u64,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
    /// Threads in the process (field 20).
    pub num_threads: u64,
    /// The CPU it last ran on.
    pub processor: u32,
}

/// Parses a stat line: fields after the `(comm)` that may hold spaces.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let get = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        state: fields.first()?.chars().next()?,
        utime: get(14)?,
        stime: get(15)?,
        start_time: get(22)?,
        num_threads: get(20)?,
        processor: get(39).unwrap_or(0) as u32,
    })
}

/// The stat of process `pid`.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The identity of a live process.
pub fn identify(pid: i32) -> Option<ProcessId> {
    let stat = stat(pid)?;
    Some(ProcessId {
        pid,
        start_time: stat.start_time,
    })
}

/// Whether `id` still runs (exists, has the same start time, and is not a
/// zombie whose every thread has ended). A killed process's main thread
/// turns zombie before its other threads (vCPUs leaving KVM_RUN) have
/// ended; until the last one has, its files, and so its image locks, are
/// still open.
pub fn alive(id: ProcessId) -> bool {
    match stat(id.pid) {
        Some(stat) => {
            stat.start_time == id.start_time && (stat.state != 'Z' || stat.num_threads > 1)
        }
        None => false,
    }
}

/// Nanoseconds per clock tick.
pub fn ns_per_tick() -> u64 {
    let ticks = crate::vm::sys::clock_ticks_per_second();
    if ticks > 0 {
        1_000_000_000 / ticks as u64
    } else {
        10_000_000
    }
}

/// A vCPU thread of a VMM: its index (from its name `vcpuN`) and stat.
#[derive(Debug, Clone, Copy)]
pub struct VcpuThread {
    /// N of `vcpuN`.
    pub index: u32,
    /// Its thread id.
    pub tid: i32,
    /// The thread's stat.
    pub stat: Stat,
}

/// The VMM's vCPU threads (named `vcpu0`, `vcpu1`, ...), by index.
pub fn vcpu_threads(pid: i32) -> Vec<VcpuThread> {
    let mut threads = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten().take(4096) {
        let path = task.path();
        let Ok(comm) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(index) = comm
            .trim()
            .strip_prefix("vcpu")
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        if let Some(stat) = fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            let tid = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            threads.push(VcpuThread { index, tid, stat });
        }
    }
    threads.sort_by_key(|t| t.index);
    threads
}

/// How long thread `tid` of `pid` waited on a run queue, in ns (the
/// second field of its schedstat), which libvirt reports as a vCPU's
/// `delay`.
pub fn run_delay_ns(pid: i32, tid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The process's resident memory in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends `signal` to `id` if it is still that process.
pub fn signal(id: ProcessId, signal: i32) {
    // The start-time check makes a reused pid unlikely to be hit.
    if alive(id) {
        crate::vm::sys::kill(id.pid, signal);
    }
}

/// Waits up to `timeout` for `id` to end; true if it did.
pub fn wait_gone(id: ProcessId, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !alive(id) {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Host memory in KiB (MemTotal).
pub fn host_memory_kib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (vcpu 0) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 98765 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!((stat.utime, stat.stime), (250, 75));
        assert_eq!(stat.start_time, 98765);
        assert_eq!(stat.num_threads, 3);
        assert_eq!(stat.processor, 3);
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = identify(std::process::id() as i32).unwrap();
        assert!(alive(me));
        assert!(!alive(ProcessId {
            pid: me.pid,
            start_time: me.start_time + 1
        }));
        assert!(rss_kib(me.pid).unwrap() > 0);
    }
}
