//! The system calls each VMM thread may make once the VM is running, in
//! one place. Each thread applies its filter before it first touches
//! anything the guest controls; a call outside its list kills the whole
//! process (SIGSYS), as Firecracker does. `--seccomp=off` skips this for
//! debugging.
//!
//! No thread may open files, create sockets, spawn processes or map
//! executable memory after setup. The lists:
//! - every thread: memory allocation, futexes, eventfd and epoll use,
//!   reads and writes, the I/O that serving a disk needs (positioned reads
//!   and writes, syncs, hole punching, io_uring, `lseek` for data
//!   extents), signal return, thread exit;
//! - vCPU threads: `ioctl` for KVM_RUN, the register reads of a fault
//!   report and the state reads of a migration's capture
//!   (`vcpu_capture`: each vCPU reads its own state as it pauses) only
//!   (activating a disk from a vCPU thread sets up io_uring
//!   and eventfds, which are in the common list), TUNSETOFFLOAD and
//!   TUNSETQUEUE for activating a network interface (the guest's receive
//!   offloads, its first tap queue), and `sendto` for the serial port's
//!   output to a console socket client;
//! - the device thread: `readv` (frames from a tap straight into the
//!   guest's buffers; `writev` sends them and is common) and TUNSETQUEUE
//!   (the guest's MQ command attaches and detaches tap queues), and
//!   `timerfd_create`/`timerfd_settime` (a receive queue's refill timer);
//! - the main thread: `tgkill`, to kick vCPU threads out of KVM_RUN, and
//!   `ioctl(0, TCSETS)` (and glibc's checking `TCGETS`) to put the
//!   terminal's settings back at the end. Only without `--api-socket`:
//!   under the API the main thread is the controller, which builds VMs
//!   (vm.boot, reboots) and so runs without a filter, as the VMM thread
//!   of Cloud Hypervisor runs with a wide one;
//! - the API thread and the console thread: accepting on their socket,
//!   reading the peer's credentials, socket timeouts, reads and writes
//!   (`recvmsg` for tap descriptors handed over with vm.create),
//!   `ioctl(FIONBIO)` to make a console client non-blocking;
//! - the lazy RAM loader: the userfaultfd ioctls that fill and wake
//!   pages and unregister the RAM at the end (`lazy_ram`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: waits for the end, stops the vCPUs, closes disks.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The device thread.
    Devices,
    /// The API thread: accepts on its socket, checks the peer, reads and
    /// writes.
    Api,
    /// The serial console's socket thread.
    Console,
    /// The lazy RAM loader (`lazy_ram`): reads the snapshot, fills pages.
    RamLoader,
}

/// System calls every thread may make.
const COMMON: &[libc::c_long] = &[
    // memory
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // synchronisation, time, identity
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    // descriptors the VMM already has, and new eventfds
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    // disk I/O
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_sync_file_range,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // signals and exit
    libc::SYS_rt_sigreturn,
    // a sleep interrupted by a stop (job control, a debugger attaching)
    // resumes through restart_syscall
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// `_IOR(KVMIO, nr, size)`.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// `_IOWR(KVMIO, nr, size)`.
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// The ioctls a vCPU thread makes after setup.
fn vcpu_ioctls() -> [u64; 14] {
    use kvm_bindings as kb;
    use std::mem::size_of;
    [
        0xae80,                                    // KVM_RUN
        kvm_ior(0x81, size_of::<kb::kvm_regs>()),  // KVM_GET_REGS
        kvm_ior(0x83, size_of::<kb::kvm_sregs>()), // KVM_GET_SREGS
        libc::TUNSETOFFLOAD,
        libc::TUNSETQUEUE,
        // A migration's capture (`vcpu_capture`): the vCPU's state but
        // its LAPIC, read on its own thread.
        kvm_ior(0x98, size_of::<kb::kvm_mp_state>()), // KVM_GET_MP_STATE
        kvm_ior(0x8c, size_of::<kb::kvm_fpu>()),      // KVM_GET_FPU
        kvm_ior(0xa4, size_of::<kb::kvm_xsave>()),    // KVM_GET_XSAVE
        kvm_ior(0xa6, size_of::<kb::kvm_xcrs>()),     // KVM_GET_XCRS
        kvm_ior(0xa1, size_of::<kb::kvm_debugregs>()), // KVM_GET_DEBUGREGS
        0xaea3,                                       // KVM_GET_TSC_KHZ
        kvm_iowr(0x91, size_of::<kb::kvm_cpuid2>()),  // KVM_GET_CPUID2
        kvm_iowr(0x88, size_of::<kb::kvm_msrs>()),    // KVM_GET_MSRS
        kvm_ior(0x9f, size_of::<kb::kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
    ]
}

/// A rule list allowing `ioctl` with one of `requests` only.
fn ioctl_rules(
    requests: &[u64],
) -> std::result::Result<Vec<SeccompRule>, seccompiler::BackendError> {
    requests
        .iter()
        .map(|&request| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect()
}

fn build(kind: ThreadKind) -> Result<BpfProgram> {
    let err = |e: seccompiler::BackendError| Error::GuestFault(format!("seccomp filter: {e}"));
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    match kind {
        ThreadKind::Main => {
            rules.insert(libc::SYS_tgkill, Vec::new());
            // Putting the terminal's settings back at the end: TCSETS on
            // standard input, and the TCGETS with which glibc's tcsetattr
            // checks what it set; nothing else.
            let on_stdin = |request: libc::c_ulong| {
                SeccompRule::new(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?,
                    SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?,
                ])
            };
            let rules_for_stdin = vec![
                on_stdin(libc::TCSETS).map_err(err)?,
                on_stdin(libc::TCGETS).map_err(err)?,
            ];
            rules.insert(libc::SYS_ioctl, rules_for_stdin);
        }
        ThreadKind::Vcpu => {
            rules.insert(libc::SYS_ioctl, ioctl_rules(&vcpu_ioctls()).map_err(err)?);
            // The serial port's output to a console socket client.
            rules.insert(libc::SYS_sendto, Vec::new());
        }
        ThreadKind::Devices => {
            rules.insert(libc::SYS_readv, Vec::new());
            // A virtio-net receive queue's refill timer, made and armed
            // by the device loop when the guest runs out of buffers.
            rules.insert(libc::SYS_timerfd_create, Vec::new());
            rules.insert(libc::SYS_timerfd_settime, Vec::new());
            rules.insert(
                libc::SYS_ioctl,
                ioctl_rules(&[libc::TUNSETQUEUE]).map_err(err)?,
            );
        }
        ThreadKind::Api | ThreadKind::Console => {
            if kind == ThreadKind::Api {
                // The controller (the main thread, whose id is the
                // process's) raised to the real-time class for a revert
                // and put back after (`thread_boost`); no other thread.
                let main = u64::from(std::process::id());
                for nr in [
                    libc::SYS_sched_getscheduler,
                    libc::SYS_sched_getparam,
                    libc::SYS_sched_setscheduler,
                ] {
                    let on_main =
                        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, main)
                            .and_then(|c| SeccompRule::new(vec![c]))
                            .map_err(err)?;
                    rules.insert(nr, vec![on_main]);
                }
            }
            for nr in [
                libc::SYS_accept4,
                libc::SYS_accept,
                libc::SYS_recvfrom,
                libc::SYS_recvmsg,
                libc::SYS_sendto,
                libc::SYS_shutdown,
                libc::SYS_getsockopt,
                libc::SYS_setsockopt,
            ] {
                rules.insert(nr, Vec::new());
            }
            // set_nonblocking on an accepted console client.
            let fionbio =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::FIONBIO)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(err)?;
            rules.insert(libc::SYS_ioctl, vec![fionbio]);
        }
        ThreadKind::RamLoader => {
            // Leaving the real-time class when the background starts
            // (`thread_boost`; thread 0 is the calling thread).
            let own = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(err)?;
            rules.insert(libc::SYS_sched_setscheduler, vec![own]);
            rules.insert(
                libc::SYS_ioctl,
                ioctl_rules(&crate::lazy_ram::LOADER_IOCTLS).map_err(err)?,
            );
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// Applies the filter of `kind` to the calling thread (for good).
pub fn apply(kind: ThreadKind) -> Result<()> {
    let program = build(kind)?;
    seccompiler::apply_filter(&program)
        .map_err(|e| Error::GuestFault(format!("applying the {kind:?} seccomp filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Api,
            ThreadKind::Console,
            ThreadKind::RamLoader,
        ] {
            assert!(build(kind).unwrap().len() > COMMON.len());
        }
        assert_eq!(vcpu_ioctls()[1], 0x8090_ae81);
        assert_eq!(vcpu_ioctls()[2], 0x8138_ae83);
        assert_eq!(vcpu_ioctls()[3], 0x4004_54d0, "TUNSETOFFLOAD");
        assert_eq!(vcpu_ioctls()[4], 0x4004_54d9, "TUNSETQUEUE");
        // The capture's reads, as linux/kvm.h numbers them on x86-64.
        assert_eq!(vcpu_ioctls()[5], 0x8004_ae98, "KVM_GET_MP_STATE");
        assert_eq!(vcpu_ioctls()[6], 0x81a0_ae8c, "KVM_GET_FPU");
        assert_eq!(vcpu_ioctls()[7], 0x9000_aea4, "KVM_GET_XSAVE");
        assert_eq!(vcpu_ioctls()[8], 0x8188_aea6, "KVM_GET_XCRS");
        assert_eq!(vcpu_ioctls()[9], 0x8080_aea1, "KVM_GET_DEBUGREGS");
        assert_eq!(vcpu_ioctls()[11], 0xc008_ae91, "KVM_GET_CPUID2");
        assert_eq!(vcpu_ioctls()[12], 0xc008_ae88, "KVM_GET_MSRS");
        assert_eq!(vcpu_ioctls()[13], 0x8040_ae9f, "KVM_GET_VCPU_EVENTS");
    }
}
