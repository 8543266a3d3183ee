//! The calling thread's CPU time, which QEMU's PBKDF2 measurement uses
//! (wall time would count the other processes of a busy machine). This
//! module holds the crypto layer's only `unsafe`.

/// CPU time the calling thread has used, in milliseconds; `None` if the
/// clock cannot be read.
pub fn thread_cpu_ms() -> Option<u128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which
    // points at a live, properly aligned local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(ts.tv_sec as u128 * 1000 + ts.tv_nsec as u128 / 1_000_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_time_advances_with_work() {
        let a = super::thread_cpu_ms().unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = super::thread_cpu_ms().unwrap();
        assert!(b >= a);
    }
}
