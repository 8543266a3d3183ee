//! Power-cut simulation: random guest workloads run over a storage that
//! records every write and flush; from each log, crash states are built as
//! a disk with a volatile write cache could leave them (see
//! `support/recording.rs`), and every one must open, pass our check with no
//! corruption (leaks are fine), read back everything the guest wrote before
//! its last completed flush, and survive being opened for writing. A sample
//! goes through `qemu-img check` too.
//!
//! Environment:
//! - `QCOW_CRASH_STATES=N`: crash states over the random configurations
//!   (default 10,000; the L2 cache eviction test adds its own);
//! - `QCOW_CRASH_QEMU=N`: states also checked by `qemu-img check` (default
//!   520; 0 turns it off);
//! - `QCOW_CRASH_CONFIG=SUBSTRING`, `QCOW_CRASH_SEED=SEED`: run only the
//!   matching configurations / workload, to replay a failure (the states of
//!   a workload depend only on its seed);
//! - `QCOW_CRASH_COMPRESSED=0`: no compressed writes (to look past the
//!   compressed-write bugs that the regressions below pin down);
//! - `QCOW_CRASH_SNAPSHOTS=N`: percent of internal snapshot operations
//!   (create, apply, delete; default 4, 0 turns them off). A crash inside
//!   one may leave COPIED flags that disagree with refcounts in the
//!   harmless directions (see `verify::harmless_copied_mismatches`); those
//!   are not counted as corruptions.

#[path = "support/driver.rs"]
mod driver;
#[path = "support/recording.rs"]
mod recording;
#[path = "support/verify.rs"]
mod verify;
#[path = "support/workload.rs"]
mod workload;

use std::sync::Arc;

use qcow::check::{check, Repair};
use qcow::create::CreateOptions;
use qcow::image::Qcow2;
use qcow::{MemStorage, Storage};

use driver::{env_u64, run_group};
use recording::{Event, Rng};
use verify::{crash_without_data_writes, host_offset_of, record_tail};
use workload::{Config, Layout, Mix};

/// Crash states drawn from one workload.
const STATES_PER_WORKLOAD: usize = 40;

/// The operation mix of the random configurations. Compressed writes are
/// left out with `QCOW_CRASH_COMPRESSED=0`; snapshots are left out with
/// 1-bit refcounts, which cannot count a second reference (QEMU refuses
/// too).
fn random_mix(refcount_bits: u32) -> Mix {
    Mix {
        write: 50,
        zero: 13,
        discard: 9,
        compressed: 8,
        snapshot: if refcount_bits > 1 {
            env_u64("QCOW_CRASH_SNAPSHOTS", 4)
        } else {
            0
        },
    }
    .compressed_if(compressed_allowed())
}

fn compressed_allowed() -> bool {
    env_u64("QCOW_CRASH_COMPRESSED", 1) != 0
}

fn l2_span(cluster_size: u64, extended_l2: bool) -> u64 {
    cluster_size / if extended_l2 { 16 } else { 8 } * cluster_size
}

/// Three regions: at the start, across the first L2 boundary, and in the
/// fourth L2 table.
fn small_layout(cluster_size: u64, extended_l2: bool) -> Layout {
    let span = l2_span(cluster_size, extended_l2);
    let n = (32768 / cluster_size).clamp(4, span / cluster_size / 2);
    Layout {
        size: 5 * span,
        regions: vec![
            (0, n * cluster_size),
            (span - n / 2 * cluster_size, n * cluster_size),
            (3 * span + 5 * cluster_size, n * cluster_size),
        ],
    }
}

fn random_config(cluster_size: u64, refcount_bits: u32, lazy: bool, extended_l2: bool) -> Config {
    Config {
        name: format!(
            "cs={}k rc={refcount_bits} lazy={} extl2={}",
            cluster_size as f64 / 1024.0,
            lazy as u8,
            extended_l2 as u8
        ),
        opts: CreateOptions {
            size: small_layout(cluster_size, extended_l2).size,
            cluster_size,
            refcount_bits,
            lazy_refcounts: lazy,
            extended_l2,
            ..Default::default()
        },
        layout: small_layout(cluster_size, extended_l2),
        mix: random_mix(refcount_bits),
        ops: 48,
        states_per_workload: STATES_PER_WORKLOAD,
        check_every_op: true,
    }
}

/// Number of random configurations: their share of the budgets.
const RANDOM_CONFIGS: u64 = 30;

fn budget(configs: usize) -> (u64, u64) {
    let states = env_u64("QCOW_CRASH_STATES", 10_000);
    let qemu = env_u64("QCOW_CRASH_QEMU", 520);
    (
        (states * configs as u64).div_ceil(RANDOM_CONFIGS),
        (qemu * configs as u64).div_ceil(RANDOM_CONFIGS),
    )
}

fn configs_for(cluster_sizes: &[u64], extended_l2: bool) -> Vec<Config> {
    let mut out = Vec::new();
    for &cs in cluster_sizes {
        for rc in [1, 16, 64] {
            for lazy in [false, true] {
                out.push(random_config(cs, rc, lazy, extended_l2));
            }
        }
    }
    out
}

#[test]
fn crash_512() {
    let configs = configs_for(&[512], false);
    let (states, qemu) = budget(configs.len());
    run_group("512", configs, states, qemu);
}

#[test]
fn crash_4k() {
    let configs = configs_for(&[4096], false);
    let (states, qemu) = budget(configs.len());
    run_group("4k", configs, states, qemu);
}

#[test]
fn crash_64k() {
    let configs = configs_for(&[65536], false);
    let (states, qemu) = budget(configs.len());
    run_group("64k", configs, states, qemu);
}

#[test]
fn crash_extended_l2() {
    let configs = configs_for(&[16384, 65536], true);
    let (states, qemu) = budget(configs.len());
    run_group("extended_l2", configs, states, qemu);
}

/// More L2 tables than the L2 cache holds (64 of 64 KiB), with few
/// flushes: dirty tables are written back on eviction, between flushes.
#[test]
fn crash_l2_cache_eviction() {
    let mut configs = Vec::new();
    for extended_l2 in [false, true] {
        let cs = 65536;
        let span = l2_span(cs, extended_l2);
        let tables = 96u64;
        let layout = Layout {
            size: tables * span,
            regions: (0..tables).map(|t| (t * span + (t % 5) * cs, cs)).collect(),
        };
        configs.push(Config {
            name: format!("eviction cs=64k extl2={}", extended_l2 as u8),
            opts: CreateOptions {
                size: layout.size,
                cluster_size: cs,
                extended_l2,
                ..Default::default()
            },
            layout,
            mix: Mix {
                write: 60,
                zero: 20,
                discard: 10,
                compressed: 9,
                snapshot: 0,
            }
            .compressed_if(compressed_allowed()),
            ops: 500,
            states_per_workload: 60,
            check_every_op: false,
        });
    }
    let states = env_u64("QCOW_CRASH_STATES", 10_000) / 40;
    let qemu = env_u64("QCOW_CRASH_QEMU", 520) / 26;
    let stats = run_group("l2 cache eviction", configs, states, qemu);
    assert!(
        stats.workloads == 0 || stats.l2_writebacks > 0,
        "the workloads never evicted a dirty L2 table"
    );
}

// Regressions: each reproduces one bug the random runs found, in the
// smallest form.

/// Bug: a preallocated zero cluster (write_zeroes without unmap) that a
/// partial write reuses in place gets a data L2 entry and the zeros around
/// the write copied in; with no refcount change pending, `Meta::flush`
/// writes the L2 table without syncing first, so the L2 entry can reach
/// the disk before the zeros and the cluster's old data shows again.
#[test]
fn zero_cluster_reused_in_place_keeps_its_zeros_across_a_crash() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        ..Default::default()
    };
    let mut host = 0;
    let (initial, log) = record_tail(
        &opts,
        |image| {
            image.write_at(&vec![0x11; cs as usize], 0).unwrap();
            image.flush().unwrap();
            host = host_offset_of(image, 0);
            image.write_zeroes(0, cs, false).unwrap();
            image.flush().unwrap();
        },
        |image| {
            image.write_at(&[0x22; 512], 0x8000).unwrap();
            image.flush().unwrap();
        },
    );
    // The written sector may read old or new; the rest must stay zero.
    let checks = [(0..0x8000, 0), (0x8200..cs, 0)];
    let failures = crash_without_data_writes(&initial, &log, host..host + cs, &checks);
    assert!(
        failures.is_empty(),
        "the zeros around a write into a preallocated zero cluster were lost:\n{}",
        failures.join("\n")
    );
}

/// Bug, eviction path: the same in-place reuse of a zero cluster, but its
/// dirty L2 table is written back when the L2 cache (64 tables of 64 KiB)
/// evicts it to load others for reads; `make_l2_room` syncs only if
/// refcounts were dirty, so again nothing orders the copied-in zeros before
/// the table.
#[test]
fn evicted_l2_table_is_written_after_its_copied_zeros() {
    let cs = 65536;
    let span = l2_span(cs, false);
    let tables = 70;
    let opts = CreateOptions {
        size: tables * span,
        cluster_size: cs,
        ..Default::default()
    };
    let mut host = 0;
    let (initial, log) = record_tail(
        &opts,
        |image| {
            for t in 0..tables {
                image.write_at(&vec![0x11; cs as usize], t * span).unwrap();
            }
            image.flush().unwrap();
            host = host_offset_of(image, 0);
            image.write_zeroes(0, cs, false).unwrap();
            image.flush().unwrap();
        },
        |image| {
            image.write_at(&[0x22; 512], 0x8000).unwrap();
            let mut buf = vec![0u8; 512];
            for t in 1..tables {
                image.read_at(&mut buf, t * span).unwrap();
            }
        },
    );
    // Evicted, not written by the final flush: only that flush's own sync
    // follows the table write (a flush writing it would sync after it too).
    let table_write = log
        .iter()
        .rposition(|e| matches!(e, Event::Write { offset, data } if data.len() as u64 == cs && !(host..host + cs).contains(offset)))
        .expect("the L2 table is written");
    let syncs_after = log[table_write..]
        .iter()
        .filter(|e| matches!(e, Event::Flush))
        .count();
    assert_eq!(
        syncs_after, 1,
        "the L2 table was not written back by eviction"
    );
    let checks = [(0..0x8000, 0), (0x8200..cs, 0)];
    let failures = crash_without_data_writes(&initial, &log, host..host + cs, &checks);
    assert!(
        failures.is_empty(),
        "an evicted L2 table reached the disk before the zeros copied into its cluster:\n{}",
        failures.join("\n")
    );
}

/// Bug: with extended L2, a write into an unallocated subcluster of an
/// allocated cluster allocates it in place (no new cluster, no refcount
/// change) and fills the rest of the subcluster with zeros; the L2 table
/// is written without a sync after those zeros, so a crash can leave the
/// subcluster allocated over stale host data (here, a freed cluster's).
#[test]
fn subcluster_allocated_in_place_keeps_its_zeros_across_a_crash() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        extended_l2: true,
        ..Default::default()
    };
    let mut host = 0;
    let (initial, log) = record_tail(
        &opts,
        |image| {
            image.write_at(&vec![0x11; cs as usize], 0).unwrap();
            image.flush().unwrap();
            let freed = host_offset_of(image, 0);
            image.discard(0, cs).unwrap();
            image.flush().unwrap();
            // Subcluster 0 of guest cluster 1 lands in the freed cluster,
            // whose other subclusters still hold 0x11.
            image.write_at(&[0x33; 2048], cs).unwrap();
            image.flush().unwrap();
            host = host_offset_of(image, cs);
            assert_eq!(host, freed, "the freed cluster was not reused");
        },
        |image| {
            image.write_at(&[0x22; 256], cs + 2048 + 256).unwrap();
            image.flush().unwrap();
        },
    );
    let checks = [
        (cs..cs + 2048, 0x33),
        (cs + 2048..cs + 2048 + 256, 0),
        (cs + 2048 + 512..2 * cs, 0),
    ];
    let failures = crash_without_data_writes(&initial, &log, host..host + cs, &checks);
    assert!(
        failures.is_empty(),
        "the zeros around a write into an unallocated subcluster were lost:\n{}",
        failures.join("\n")
    );
}

fn compressible_cluster(cs: u64, seed: u8) -> Vec<u8> {
    (0..cs).map(|i| seed ^ (i / 1024) as u8).collect()
}

fn new_mem_image(opts: &CreateOptions) -> (Arc<MemStorage>, Qcow2) {
    let mem = Arc::new(MemStorage::new());
    let file: Arc<dyn Storage> = mem.clone();
    let image = qcow::create::create(file, None, None, opts).expect("create");
    (mem, image)
}

/// Bug (no crash needed): `Meta::compressed_cursor` still points into the
/// host cluster of earlier compressed data after that cluster was freed
/// and reused for a normal data cluster; the next compressed write packs
/// its bytes there (over the guest's data) and raises the cluster's
/// refcount to 2 under a COPIED L2 entry.
#[test]
fn compressed_write_never_packs_into_a_freed_and_reused_cluster() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        ..Default::default()
    };
    let (mem, image) = new_mem_image(&opts);
    assert!(image
        .write_compressed(0, &compressible_cluster(cs, 1))
        .unwrap());
    // Overwrite it: the compressed cluster's host cluster is freed at the
    // flush...
    image.write_at(&vec![0x44; cs as usize], 0).unwrap();
    image.flush().unwrap();
    // ...and reused for guest cluster 1.
    let data = vec![0x55u8; cs as usize];
    image.write_at(&data, cs).unwrap();
    let second = compressible_cluster(cs, 2);
    assert!(image.write_compressed(2, &second).unwrap());
    image.flush().unwrap();
    let mut got = vec![0u8; cs as usize];
    image.read_at(&mut got, cs).unwrap();
    let damaged = got.iter().zip(&data).filter(|(a, b)| a != b).count();
    image.read_at(&mut got, 2 * cs).unwrap();
    let compressed_ok = got == second;
    drop(image);
    let report = check(&*mem, None, Repair::None).unwrap();
    assert!(
        damaged == 0 && compressed_ok && report.corruptions == 0,
        "{damaged} bytes of guest cluster 1 overwritten, compressed cluster 2 reads back: \
         {compressed_ok}, check: {} corruptions\n{}",
        report.corruptions,
        report.messages.join("\n")
    );
}

/// Bug, snapshot path: the same stale `compressed_cursor` when the host
/// cluster of compressed data is freed by a snapshot apply (which drops the
/// active tree's references directly, not through the deferred frees).
#[test]
fn compressed_write_never_packs_into_a_cluster_freed_by_a_snapshot_apply() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        ..Default::default()
    };
    let (mem, image) = new_mem_image(&opts);
    image.create_snapshot("empty").unwrap();
    assert!(image
        .write_compressed(0, &compressible_cluster(cs, 1))
        .unwrap());
    // Back to the empty disk: the compressed data's host cluster is freed.
    image.apply_snapshot("empty").unwrap();
    let patterns: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![0x50 + i; cs as usize]).collect();
    for (i, data) in patterns.iter().enumerate() {
        image.write_at(data, (i as u64 + 1) * cs).unwrap();
    }
    let compressed = compressible_cluster(cs, 2);
    assert!(image.write_compressed(5, &compressed).unwrap());
    image.flush().unwrap();
    let mut got = vec![0u8; cs as usize];
    let mut damaged = Vec::new();
    for (i, data) in patterns.iter().enumerate() {
        image.read_at(&mut got, (i as u64 + 1) * cs).unwrap();
        if got != *data {
            damaged.push(i + 1);
        }
    }
    let compressed_read = match image.read_at(&mut got, 5 * cs) {
        Ok(()) if got == compressed => "its own data".to_string(),
        Ok(()) => "other data".to_string(),
        Err(e) => format!("an error ({e})"),
    };
    drop(image);
    let report = check(&*mem, None, Repair::None).unwrap();
    assert!(
        damaged.is_empty() && compressed_read == "its own data" && report.corruptions == 0,
        "guest clusters {damaged:?} overwritten, the compressed cluster reads back \
         {compressed_read}, check: {} corruptions\n{}",
        report.corruptions,
        report.messages.join("\n")
    );
}

/// Half random, half zero: compresses to a little over half a cluster, so
/// that two of them never share a host cluster.
fn half_compressible_cluster(cs: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..cs)
        .map(|i| if i < cs / 2 { rng.next() as u8 } else { 0 })
        .collect()
}

/// Bug (no crash needed): the cache of the last decompressed cluster is
/// keyed by host offset only and never invalidated, so once a freed host
/// cluster is reused for new compressed data at the same offset, reads
/// return the old cluster's contents.
#[test]
fn compressed_write_at_a_reused_offset_reads_back_its_own_data() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        ..Default::default()
    };
    let (_mem, image) = new_mem_image(&opts);
    let first = half_compressible_cluster(cs, 1);
    assert!(image.write_compressed(0, &first).unwrap());
    let mut got = vec![0u8; cs as usize];
    image.read_at(&mut got, 0).unwrap();
    assert!(got == first);
    let host = match image.extents(0, 1).unwrap()[0].kind {
        qcow::device::ExtentKind::Compressed { host_offset, .. } => host_offset,
        ref other => panic!("not compressed: {other:?}"),
    };
    // Free its host cluster...
    image.write_at(&vec![0x44; cs as usize], 0).unwrap();
    image.flush().unwrap();
    // ...and compress another cluster, too big to share the old one's
    // host cluster with it, into the same place.
    let second = half_compressible_cluster(cs, 2);
    assert!(image.write_compressed(1, &second).unwrap());
    match image.extents(cs, 1).unwrap()[0].kind {
        qcow::device::ExtentKind::Compressed { host_offset, .. } => {
            assert_eq!(host_offset, host, "the freed host cluster was not reused")
        }
        ref other => panic!("not compressed: {other:?}"),
    }
    image.read_at(&mut got, cs).unwrap();
    assert!(
        got == second,
        "guest cluster 1 reads the contents of an earlier compressed cluster that lived at \
         the same host offset"
    );
}

/// Bug (no crash needed): with 1-bit refcounts a host cluster holding
/// compressed data cannot be shared, but `write_compressed` packs the next
/// compressed cluster into it anyway and fails with a refcount overflow;
/// QEMU starts a new host cluster when the refcount is at its maximum.
#[test]
fn compressed_writes_share_a_cluster_with_one_bit_refcounts() {
    let cs = 65536;
    let opts = CreateOptions {
        size: 1 << 20,
        cluster_size: cs,
        refcount_bits: 1,
        ..Default::default()
    };
    let (mem, image) = new_mem_image(&opts);
    let first = compressible_cluster(cs, 1);
    let second = compressible_cluster(cs, 2);
    image.write_compressed(0, &first).unwrap();
    if let Err(e) = image.write_compressed(1, &second) {
        panic!("second compressed write with 1-bit refcounts: {e}");
    }
    image.flush().unwrap();
    let mut got = vec![0u8; 2 * cs as usize];
    image.read_at(&mut got, 0).unwrap();
    assert!(got[..cs as usize] == first[..] && got[cs as usize..] == second[..]);
    drop(image);
    assert_eq!(check(&*mem, None, Repair::None).unwrap().corruptions, 0);
}
