//! Thread CPU affinity through sched_setaffinity/sched_getaffinity, and a
//! thread's return to the time-sharing class (all of the resources
//! module's `unsafe` is here).

use super::cpuset::{CpuSet, MAX_CPUS};

/// Pins thread `tid` to the CPUs of `set`.
pub fn set(tid: i32, set: &CpuSet) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = std::mem::size_of::<libc::cpu_set_t>() * 8;
    for &cpu in set.cpus() {
        if cpu >= capacity {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: cpu is under the mask's capacity (checked above).
        unsafe { libc::CPU_SET(cpu, &mut mask) };
    }
    // SAFETY: mask is a valid cpu_set_t of the size passed; the kernel
    // only reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mask) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs thread `tid` may run on.
pub fn get(tid: i32) -> std::io::Result<CpuSet> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: mask is a valid, writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut mask) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let capacity = (std::mem::size_of::<libc::cpu_set_t>() * 8).min(MAX_CPUS);
    // SAFETY: cpu is under the mask's capacity.
    Ok(CpuSet::from_cpus(
        (0..capacity).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) }),
    ))
}

/// Puts thread `tid` in the time-sharing class (SCHED_OTHER, nice as it
/// was): lowering a thread of the same user needs no privilege.
pub fn to_time_sharing(tid: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param the kernel only reads; the
    // call changes thread `tid`'s scheduling class and nothing else.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The host's online CPU count (sysconf).
pub fn host_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_reads_back_its_set() {
        let handle = std::thread::spawn(|| {
            // SAFETY: gettid has no memory effects.
            let tid = unsafe { libc::gettid() };
            set(tid, &CpuSet::parse("0").unwrap()).unwrap();
            get(tid).unwrap()
        });
        assert_eq!(handle.join().unwrap().cpus(), [0]);
    }

    #[test]
    fn a_real_time_thread_goes_back_to_time_sharing() {
        let policy = std::thread::spawn(|| {
            // SAFETY: gettid has no memory effects.
            let tid = unsafe { libc::gettid() };
            let fifo = libc::sched_param { sched_priority: 1 };
            // SAFETY: `fifo` is a valid sched_param, only read; it changes
            // this test thread's class (refused without the right, which
            // leaves the thread time-sharing: the check below holds too).
            unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &fifo) };
            to_time_sharing(tid).unwrap();
            // SAFETY: reads this thread's policy only.
            unsafe { libc::sched_getscheduler(tid) }
        });
        assert_eq!(policy.join().unwrap(), libc::SCHED_OTHER);
    }
}
