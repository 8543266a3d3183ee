//! kill -9 harness over full snapshots (disk plus VM state, as `vm
//! snapshot-create-as` and QEMU's savevm take them), reverts and deletes.
//! A child process (this test binary run again with
//! `KILL9_SNAPSHOT_CHILD` set) works on a qcow2 image with the qcow
//! library: it writes a signature over the disk's first 64 KiB, writes a
//! VM state into the VM-state area and creates a snapshot recording it,
//! reverts to a random snapshot (flushed, unflushed, or as the VMM
//! reverts: the old tree freed only after a write, the kill may land
//! between), deletes one, or writes and flushes, and
//! logs (synced) every operation it begins and ends. The parent kills it
//! with SIGKILL at a random moment and holds the image to these rules:
//!
//! 1. every snapshot the log says was created (and whose delete never
//!    began) is there; every one whose delete ended is gone; the one being
//!    created or deleted at the kill may be either: whole or absent;
//! 2. every snapshot there holds exactly its VM state (size and bytes,
//!    derived from its name) and its disk signature, read through our
//!    library;
//! 3. `qemu-img check` finds no corruption (leaks only, or the COPIED
//!    flags a kill inside a snapshot operation leaves in the two harmless
//!    directions, as `tests/kill9.rs` explains), `img check -r` repairs,
//!    after which both checkers find the image clean and qemu reads the
//!    disk as we do.
//!
//! Each trial runs three rounds on one image (each child reopens what the
//! last left), cycling cluster sizes 4 KiB, 64 KiB and 64 KiB with
//! extended L2. `KILL9_SNAPSHOT_TRIALS=N` (default 6) runs more;
//! `KILL9_SNAPSHOT_SEED=S` starts from another seed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::crash::{
    check_and_repair, env_u64, harmless_copied_mismatches, qemu_errors, read_all, read_qcow2,
    run_and_kill, scratch_dir, whole_lines,
};
use integration_tests::workload::mix;
use integration_tests::{ok, qemu_img, require_qemu, Rng};
use qcow::fs::{open_storage, FileOpener};
use qcow::image::{Qcow2, VmStateInfo};

const CHILD_ENV: &str = "KILL9_SNAPSHOT_CHILD";
const TEST_NAME: &str = "kill9_during_full_snapshots_reverts_and_deletes";
const DISK: u64 = 4 << 20;
const SIGNATURE: usize = 64 << 10;

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The VM state snapshot `name` holds.
fn state_of(name: &str) -> Vec<u8> {
    let seed = name_seed(name);
    let mut v = vec![0u8; 10_000 + (mix(seed) % 2_000_000) as usize];
    Rng(seed | 1).fill(&mut v);
    v
}

/// The byte of snapshot `name`'s disk signature.
fn signature_of(name: &str) -> u8 {
    (name_seed(name) % 251) as u8 + 1
}

/// The child: runs operations on `path` until killed, logging to `log`.
fn child(path: &Path, log: &Path, seed: u64, round: u64) {
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .expect("open the log");
    let mut note = |line: String| {
        journal.write_all(format!("{line}\n").as_bytes()).unwrap();
        journal.sync_data().unwrap();
    };
    let storage = open_storage(path, true).expect("open the image file");
    let image = Qcow2::open(storage, true, &FileOpener::for_image(path)).expect("open qcow2");
    note("flushed open".into());
    for n in 0..10_000u64 {
        let r = mix(seed ^ (round << 40) ^ n);
        let existing: Vec<String> = image
            .snapshots()
            .expect("snapshot table")
            .into_iter()
            .map(|s| s.name)
            .collect();
        let pick = existing
            .get((r >> 8) as usize % existing.len().max(1))
            .cloned();
        match (r % 10, pick) {
            (0..=4, _) | (_, None) => {
                let name = format!("r{round}-s{n}");
                image
                    .write_at(&[signature_of(&name); SIGNATURE], 0)
                    .expect("signature");
                note(format!("begin create {name}"));
                let state = state_of(&name);
                let mut w = image.vm_state_writer().expect("state writer");
                // As the VMM writes its records: a header's pages kept in
                // the page cache every 100 kB (written again after the
                // direct writes, a step a kill may interrupt too).
                for piece in state.chunks(100_000) {
                    w.keep_cached(28);
                    w.write_all(piece).expect("state");
                }
                let size = w.finish().expect("finish state");
                image
                    .create_snapshot_with_vm_state(
                        &name,
                        VmStateInfo {
                            vm_state_size: size,
                            vm_clock_nsec: n,
                        },
                    )
                    .expect("create");
                note(format!("done create {name}"));
            }
            (5, Some(name)) => {
                note(format!("begin apply {name}"));
                image.apply_snapshot(&name).expect("apply");
                note(format!("done apply {name}"));
            }
            (6, Some(name)) if r & (1 << 20) == 0 => {
                // The old tree's frees stay in the metadata cache until
                // the next operation's flush, so a kill after this
                // returns may leak clusters, never more.
                note(format!("begin apply {name}"));
                image.apply_snapshot_unflushed(&name).expect("apply");
                note(format!("done apply {name}"));
            }
            (6, Some(name)) => {
                // As the VMM reverts: the header's sync and the old tree's
                // freeing wait until the guest runs and writes; a kill in
                // that window leaks clusters, never more.
                note(format!("begin apply {name}"));
                image.apply_snapshot_deferring_free(&name).expect("apply");
                note(format!("done apply {name}"));
                note(format!("deferred {name}"));
                let offset = (r >> 24) % (DISK - 100_000);
                image.write_at(&[r as u8; 100_000], offset).expect("write");
                if r & (1 << 21) != 0 {
                    // The guest's flush comes first: it writes the
                    // revert's refcounts, tables and header under one
                    // sync before the header and frees the old tree in
                    // the cache; the next flush writes the decrements.
                    image.flush_metadata().expect("guest flush");
                    image.write_at(&[!r as u8; 4096], offset).expect("write");
                    image.flush_metadata().expect("guest flush");
                }
                std::thread::sleep(Duration::from_millis(1 + (r >> 12) % 4));
                image.free_replaced_trees().expect("free");
                note(format!("freed {name}"));
            }
            (7..=8, Some(name)) => {
                note(format!("begin delete {name}"));
                image.delete_snapshot(&name).expect("delete");
                note(format!("done delete {name}"));
            }
            _ => {
                let offset = (r >> 16) % (DISK - 100_000);
                image.write_at(&[r as u8; 100_000], offset).expect("write");
                image.flush().expect("flush");
            }
        }
    }
    note("end".into());
}

/// What a kill interrupted, from the log.
#[derive(Debug, Default, Clone, Copy)]
struct KilledIn {
    /// A snapshot create, revert or delete.
    snapshot_op: bool,
    /// A deferred revert's window: after the revert returned, before its
    /// old tree was freed.
    deferred_free: bool,
}

/// Rules 1 and 2 for the log of every round so far; what the kill
/// interrupted, and how many snapshots were read.
fn verify_snapshots(path: &Path, log: &str) -> Result<(KilledIn, usize), String> {
    let mut must = BTreeSet::new();
    let mut gone = BTreeSet::new();
    let mut killed_in = KilledIn::default();
    for line in whole_lines(log) {
        let words: Vec<&str> = line.split(' ').collect();
        killed_in = KilledIn {
            snapshot_op: matches!(words[..], ["begin", _, _]),
            deferred_free: matches!(words[..], ["deferred", _]),
        };
        match words[..] {
            ["done", "create", name] => {
                must.insert(name.to_string());
            }
            ["begin", "delete", name] => {
                must.remove(name);
            }
            ["done", "delete", name] => {
                gone.insert(name.to_string());
            }
            _ => {}
        }
    }
    let image = read_qcow2(path)?;
    let snapshots = image.snapshots().map_err(|e| e.to_string())?;
    let present: BTreeSet<String> = snapshots.iter().map(|s| s.name.clone()).collect();
    if let Some(lost) = must.difference(&present).next() {
        return Err(format!("snapshot {lost} was created but is gone"));
    }
    if let Some(back) = gone.intersection(&present).next() {
        return Err(format!("snapshot {back} was deleted but is there"));
    }
    for s in &snapshots {
        let want = state_of(&s.name);
        if s.vm_state_size != want.len() as u64 {
            return Err(format!(
                "snapshot {}: vm_state_size {} instead of {}",
                s.name,
                s.vm_state_size,
                want.len()
            ));
        }
        let mut got = vec![0u8; want.len()];
        image
            .read_vm_state(&s.name, 0, &mut got)
            .map_err(|e| format!("snapshot {}: {e}", s.name))?;
        if got != want {
            return Err(format!("snapshot {}: its VM state differs", s.name));
        }
        let view = read_qcow2(path)?;
        view.view_snapshot(&s.name).map_err(|e| e.to_string())?;
        let mut sig = vec![0u8; SIGNATURE];
        view.read_at(&mut sig, 0).map_err(|e| e.to_string())?;
        if sig.iter().any(|&b| b != signature_of(&s.name)) {
            return Err(format!("snapshot {}: its disk differs", s.name));
        }
    }
    Ok((killed_in, snapshots.len()))
}

/// What the trials saw.
#[derive(Default)]
struct Stats {
    kills: u64,
    inside_snapshot_ops: u64,
    inside_deferred_frees: u64,
    snapshots_read: u64,
}

fn trial(seed: u64, stats: &mut Stats) -> Result<(), String> {
    let dir = scratch_dir();
    let path = dir.path().join("vm.qcow2");
    let (cluster_size, options) = match seed % 3 {
        0 => (4096, "cluster_size=4096"),
        1 => (65536, "cluster_size=65536"),
        _ => (65536, "cluster_size=65536,extended_l2=on"),
    };
    ok(qemu_img(&["create", "-q", "-f", "qcow2", "-o", options])
        .arg(&path)
        .arg(DISK.to_string()));
    let log = dir.path().join("log");
    for round in 0..3u64 {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!("{} {} {seed} {round}", path.display(), log.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let delay = Duration::from_micros(mix(seed ^ round ^ 0x55) % 120_000);
        let text = run_and_kill(child, &log, delay, "end")?;
        let (killed_in, read) = verify_snapshots(&path, &text)
            .map_err(|e| format!("round {round}, after {delay:?}: {e}"))?;
        let in_snapshot_op = killed_in.snapshot_op;
        stats.kills += 1;
        stats.inside_snapshot_ops += u64::from(in_snapshot_op);
        stats.inside_deferred_frees += u64::from(killed_in.deferred_free);
        stats.snapshots_read += read as u64;
        let active = read_all(&read_qcow2(&path)?)?;
        let excused = |code: i32, text: &str| {
            in_snapshot_op
                && code == 2
                && qemu_errors(text) == harmless_copied_mismatches(text, cluster_size)
        };
        check_and_repair(&path, false, &active, &excused)
            .map_err(|e| format!("round {round}, after {delay:?}: {e}"))?;
        // The snapshots are still whole after the repair.
        verify_snapshots(&path, &text).map_err(|e| format!("round {round}, repaired: {e}"))?;
    }
    Ok(())
}

#[test]
fn kill9_during_full_snapshots_reverts_and_deletes() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let parts: Vec<&str> = args.split(' ').collect();
        let [path, log, seed, round] = parts[..] else {
            panic!("bad {CHILD_ENV}: {args}");
        };
        child(
            Path::new(path),
            Path::new(log),
            seed.parse().unwrap(),
            round.parse().unwrap(),
        );
        return;
    }
    require_qemu!();
    let trials = env_u64("KILL9_SNAPSHOT_TRIALS", 6);
    let first = env_u64("KILL9_SNAPSHOT_SEED", 1);
    let mut stats = Stats::default();
    for seed in first..first + trials {
        if let Err(e) = trial(seed, &mut stats) {
            panic!("trial seed {seed} (KILL9_SNAPSHOT_SEED={seed} KILL9_SNAPSHOT_TRIALS=1): {e}");
        }
    }
    eprintln!(
        "kill9_snapshot: {trials} trials, {} kills, {} inside a snapshot create, revert or \
         delete, {} between a deferred revert and its freeing, {} snapshots read back whole",
        stats.kills, stats.inside_snapshot_ops, stats.inside_deferred_frees, stats.snapshots_read
    );
    assert!(stats.kills > 0);
}
