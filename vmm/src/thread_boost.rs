//! The real-time class (SCHED_FIFO at its lowest priority, above every
//! time-sharing thread) for the VMM's threads a client or a guest waits
//! on while they are mostly asleep: the API thread (woken by a client's
//! request), the controller while it runs a revert (raised by the API
//! thread, which hands it the request), and the lazy RAM loader until
//! the guest's first milliseconds are served (`lazy_ram`).
//!
//! Why: on a host whose cores all run guests' vCPUs, a woken
//! time-sharing thread can wait behind them. Traced slow reverts on this
//! two-core host: the API thread runnable for 35 ms and for 142 ms before
//! it ran (the second time at nice -10: a raised nice value did not get
//! it a core either), the loader preempted for 4 ms while the guest's
//! first fault waited on it. A real-time thread runs at once; the
//! kernel's real-time throttling still leaves the time-sharing threads
//! 5% of each second. The threads raised here sleep but for short work.
//! A thread without the right (no CAP_SYS_NICE, RLIMIT_RTPRIO 0) stays
//! as it was: this is only a preference. `VMM_REALTIME=off` in the VMM's
//! environment leaves every thread as it is (to compare), as
//! `VMM_MIGRATION_REALTIME=off` does for a migration's window
//! ([`crate::migration::sched`]).

/// The real-time priority of a raised thread: the lowest.
pub const PRIORITY: libc::c_int = 1;

/// The environment variable that turns raising off (`off`).
pub const SWITCH_ENV: &str = "VMM_REALTIME";

/// A thread's scheduling as it was before it was raised.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    tid: libc::pid_t,
    policy: libc::c_int,
    priority: libc::c_int,
}

/// Whether raising is turned off in this process's environment.
pub fn off() -> bool {
    std::env::var_os(SWITCH_ENV).is_some_and(|v| v == "off")
}

/// Raises thread `tid` (0: the calling thread) to the real-time class
/// unless it is in it already or raising is [`off`]: how it was, to put
/// back with [`put_back`], when it was raised.
pub fn raise(tid: libc::pid_t) -> Option<Before> {
    if off() {
        return None;
    }
    // SAFETY: sched_getscheduler only reads thread `tid`'s policy.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param the call writes into.
    if policy < 0 || unsafe { libc::sched_getparam(tid, &mut param) } != 0 {
        return None;
    }
    let policy = policy & !libc::SCHED_RESET_ON_FORK;
    if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
        return None;
    }
    let boost = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: `boost` is a valid sched_param the call only reads; it
    // changes thread `tid`'s scheduling and nothing else. Threads it
    // starts meanwhile start in the time-sharing class (reset on fork).
    let set = unsafe {
        libc::sched_setscheduler(tid, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &boost)
    };
    (set == 0).then_some(Before {
        tid,
        policy,
        priority: param.sched_priority,
    })
}

/// Puts a raised thread back as it was.
pub fn put_back(before: Before) {
    let param = libc::sched_param {
        sched_priority: before.priority,
    };
    // SAFETY: `param` is the priority read before the thread was raised;
    // the call only reads it. A thread ended since makes it fail with
    // ESRCH, which leaves nothing to undo.
    unsafe {
        libc::sched_setscheduler(before.tid, before.policy, &param);
    }
}

/// Raises every thread of this process whose name starts with one of
/// `prefixes` (`/proc/self/task/*/comm`); how each was, for
/// [`put_back_all`].
pub fn raise_named(prefixes: &[&str]) -> Vec<Before> {
    if off() {
        return Vec::new();
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let tid: libc::pid_t = dir.file_name()?.to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix))
                .then(|| raise(tid))
                .flatten()
        })
        .collect()
}

/// Puts every thread of `raised` back as it was.
pub fn put_back_all(raised: Vec<Before>) {
    raised.into_iter().for_each(put_back);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: reads thread `tid`'s policy only.
        unsafe { libc::sched_getscheduler(tid) & !libc::SCHED_RESET_ON_FORK }
    }

    #[test]
    fn a_raised_thread_is_put_back_and_a_raised_one_is_not_raised_again() {
        std::thread::spawn(|| {
            let before = policy(0);
            match raise(0) {
                // Allowed here (root, or RLIMIT_RTPRIO): raised, then back.
                Some(was) => {
                    assert_eq!(was.policy, before);
                    assert_eq!(policy(0), libc::SCHED_FIFO);
                    // A thread it starts now is time-sharing.
                    let child = std::thread::spawn(|| policy(0)).join().expect("joins");
                    assert_eq!(child, libc::SCHED_OTHER);
                    assert!(raise(0).is_none(), "already real-time");
                    put_back(was);
                    assert_eq!(policy(0), before);
                }
                // Not allowed (or VMM_REALTIME=off): nothing changed.
                None => assert_eq!(policy(0), before),
            }
        })
        .join()
        .expect("the test thread ends");
    }

    #[test]
    fn threads_are_raised_by_name_and_put_back() {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let named = std::thread::Builder::new()
            .name("boost-probe".into())
            .spawn(move || {
                // SAFETY: gettid has no arguments and no side effect.
                ready_tx.send(unsafe { libc::gettid() }).expect("sends");
                let _ = done.recv();
            })
            .expect("starts");
        let tid = ready.recv().expect("its id");
        let before = policy(tid);
        let raised = raise_named(&["boost-pro"]);
        // Raised if allowed here, and no other thread of the test.
        assert!(raised.len() <= 1);
        if raised.len() == 1 {
            assert_eq!(policy(tid), libc::SCHED_FIFO);
        }
        put_back_all(raised);
        assert_eq!(policy(tid), before);
        done_tx.send(()).expect("sends");
        named.join().expect("ends");
    }
}
