//! Each VMM thread's seccomp filter stops the process on a call outside
//! its list (here: opening a file, which no thread may do once the VM
//! runs) and lets listed calls through. The filtered thread runs in a child
//! process: this test binary re-run with `VMM_SECCOMP_CHILD` set.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use vmm::seccomp::{apply, ThreadKind};

const KINDS: [(&str, ThreadKind); 3] = [
    ("main", ThreadKind::Main),
    ("vcpu", ThreadKind::Vcpu),
    ("devices", ThreadKind::Devices),
];

/// Runs in the child only: applies the filter in a new thread, then makes
/// an allowed call and, unless told otherwise, a forbidden one.
#[test]
fn child_under_filter() {
    let Ok(spec) = std::env::var("VMM_SECCOMP_CHILD") else {
        return;
    };
    let (kind, action) = spec.split_once(':').expect("kind:action");
    let kind = KINDS.iter().find(|(n, _)| *n == kind).expect("kind").1;
    let action = action.to_string();
    std::thread::spawn(move || {
        if action == "warm" {
            vmm::migration::prefault::prime_allocator();
        }
        apply(kind).expect("apply filter");
        eprintln!("filtered thread writes");
        if action == "open" {
            let _ = std::fs::File::open("/proc/self/status");
            eprintln!("open was allowed");
        }
        if action == "warm" {
            // What a vCPU thread does when a migration starts: heap
            // allocated and freed past glibc's trim threshold (its arena
            // shrinks: glibc's first shrink reads a /proc file).
            vmm::migration::prefault::warm_thread();
            eprintln!("warmed");
        }
    })
    .join()
    .expect("thread");
    eprintln!("child done");
}

/// A vCPU thread primed before its filter ([`prime_allocator`]) warms its
/// heap under it at a migration's start without glibc's one-time file
/// reads killing the process (they did when the warming moved after the
/// filter, before the priming).
///
/// [`prime_allocator`]: vmm::migration::prefault::prime_allocator
#[test]
fn a_primed_vcpu_thread_warms_under_its_filter() {
    if std::env::var_os("VMM_SECCOMP_CHILD").is_some() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_under_filter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VMM_SECCOMP_CHILD", "vcpu:warm")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.contains("warmed") && stderr.contains("child done"),
        "{stderr}"
    );
}

#[test]
fn forbidden_calls_kill_the_process_allowed_ones_pass() {
    if std::env::var_os("VMM_SECCOMP_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (name, _) in KINDS {
        for action in ["open", "none"] {
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "child_under_filter",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("VMM_SECCOMP_CHILD", format!("{name}:{action}"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("filtered thread writes"),
                "{name}: {stderr}"
            );
            if action == "open" {
                assert_eq!(
                    out.status.signal(),
                    Some(libc::SIGSYS),
                    "{name}: a forbidden open must kill the process: {stderr}"
                );
                assert!(!stderr.contains("open was allowed"), "{name}");
            } else {
                assert!(out.status.success(), "{name}: {stderr}");
                assert!(stderr.contains("child done"), "{name}");
            }
        }
    }
}
