//! Model-based test of internal snapshots: random writes, discards,
//! write-zeroes and snapshot create/apply/delete against a plain model
//! (apply flushed, unflushed, or with the old tree freed later, as the VMM
//! reverts);
//! after every batch the image reads as the model, each snapshot read by
//! qemu-img (`convert -l snapshot.name=`) equals the model's copy, and
//! `qemu-img check` is clean. `QCOW_SNAPSHOT_OPS` sets the operations per
//! configuration (default 2,000).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use qcow::create::{create, CreateOptions};
use qcow::image::Qcow2;
use qcow::{FileStorage, Storage};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn qemu() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

fn qemu_check(path: &Path) {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_read_snapshot(path: &Path, name: &str, size: u64) -> Vec<u8> {
    let out_path = path.with_extension(format!("snap-{name}.raw"));
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw", "-l"])
        .arg(format!("snapshot.name={name}"))
        .arg(path)
        .arg(&out_path)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img could not read snapshot {name}");
    let mut data = std::fs::read(&out_path).unwrap();
    std::fs::remove_file(&out_path).unwrap();
    data.resize(size as usize, 0);
    data
}

fn run(cluster_size: u64, refcount_bits: u32, version: u32, seed: u64) {
    let ops: u64 = std::env::var("QCOW_SNAPSHOT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let size: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.qcow2");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    let opts = CreateOptions {
        size,
        cluster_size,
        refcount_bits,
        version,
        ..Default::default()
    };
    let image: Qcow2 = create(storage, None, None, &opts).unwrap();
    let mut model = vec![0u8; size as usize];
    let mut snapshots: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng(seed);
    let mut next_name = 0;
    let batch = 250;
    let mut done = 0;
    while done < ops {
        for _ in 0..batch.min(ops - done) {
            let offset = rng.below(size);
            let len = (1 + rng.below(3 * cluster_size)).min(size - offset);
            match rng.below(20) {
                0..=9 => {
                    let v = rng.next() as u8;
                    let data = vec![v; len as usize];
                    image.write_at(&data, offset).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(v);
                    // A revert's old tree freed between the guest's
                    // writes, as the VMM frees it once the guest runs,
                    // and the guest's flushes (the first after a deferred
                    // revert writes its header).
                    match rng.below(8) {
                        0 => {
                            image.free_replaced_trees().unwrap();
                        }
                        1 => {
                            image.flush_metadata().unwrap();
                        }
                        _ => {}
                    }
                }
                10 | 11 => {
                    image.discard(offset, len).unwrap();
                    let first = offset.div_ceil(cluster_size) * cluster_size;
                    let end = (offset + len) / cluster_size * cluster_size;
                    if first < end {
                        model[first as usize..end as usize].fill(0);
                    }
                }
                12 | 13 => {
                    image.write_zeroes(offset, len, rng.below(2) == 0).unwrap();
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
                14 | 15 if snapshots.len() < 5 => {
                    next_name += 1;
                    let name = format!("snap{next_name}");
                    image.create_snapshot(&name).unwrap();
                    snapshots.insert(name, model.clone());
                }
                16 | 17 if !snapshots.is_empty() => {
                    let k = rng.below(snapshots.len() as u64) as usize;
                    let name = snapshots.keys().nth(k).unwrap().clone();
                    match rng.below(3) {
                        0 => image.apply_snapshot(&name).unwrap(),
                        1 => image.apply_snapshot_unflushed(&name).unwrap(),
                        // The old tree is freed later: by a write above,
                        // the next snapshot operation or the batch's flush.
                        _ => image.apply_snapshot_deferring_free(&name).unwrap(),
                    }
                    model = snapshots[&name].clone();
                }
                18 | 19 if !snapshots.is_empty() => {
                    let k = rng.below(snapshots.len() as u64) as usize;
                    let name = snapshots.keys().nth(k).unwrap().clone();
                    image.delete_snapshot(&name).unwrap();
                    snapshots.remove(&name);
                }
                _ => {}
            }
        }
        done += batch.min(ops - done);
        let mut buf = vec![0u8; size as usize];
        image.read_at(&mut buf, 0).unwrap();
        if buf != model {
            let at = buf.iter().zip(&model).position(|(a, b)| a != b).unwrap();
            panic!("cs {cluster_size} rc {refcount_bits}: after {done} ops byte {at} differs");
        }
        image.flush().unwrap();
        let report = qcow::check::check(&**image.file(), None, qcow::check::Repair::None).unwrap();
        assert_eq!(
            (report.corruptions, report.leaks),
            (0, 0),
            "our check after {done} ops: {:?}",
            report.messages
        );
        if qemu() {
            qemu_check(&path);
            for (name, want) in &snapshots {
                let got = qemu_read_snapshot(&path, name, size);
                assert!(
                    &got == want,
                    "snapshot {name} reads differently after {done} ops"
                );
            }
        }
    }
}

#[test]
fn snapshots_64k_rc16() {
    run(65536, 16, 3, 0x1234_5678_9abc_def1);
}

#[test]
fn snapshots_4k_rc64() {
    run(4096, 64, 3, 0x0fed_cba9_8765_4321);
}

#[test]
fn snapshots_512_rc4() {
    run(512, 4, 3, 0x5555_aaaa_3333_cccc);
}

#[test]
fn snapshots_v2_16k() {
    run(16384, 16, 2, 0x7777_1111_2222_9999);
}

/// A revert that leaves its syncs, header and old tree to free later:
/// until then the image on disk has leaks only and the guest's writes never land in the old
/// tree's clusters; once freed and flushed it is clean, and a second
/// deferred revert frees the first one's tree before it starts.
#[test]
fn a_deferred_free_leaves_leaks_only_until_it_runs() {
    let cluster_size = 65536u64;
    let size = 4u64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.qcow2");
    let open_file = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap()
    };
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(open_file()));
    let opts = CreateOptions {
        size,
        cluster_size,
        ..Default::default()
    };
    let image: Qcow2 = create(storage, None, None, &opts).unwrap();
    let on_disk = || {
        let file: Arc<dyn Storage> = Arc::new(FileStorage::new(open_file()));
        let report = qcow::check::check(&*file, None, qcow::check::Repair::None).unwrap();
        (report.corruptions, report.leaks)
    };
    let read_all = |image: &Qcow2| {
        let mut buf = vec![0u8; size as usize];
        image.read_at(&mut buf, 0).unwrap();
        buf
    };
    image.write_at(&vec![1u8; size as usize], 0).unwrap();
    image.create_snapshot("a").unwrap();
    let at_a = read_all(&image);
    // The active tree moves away from the snapshot's (copy-on-write).
    image.write_at(&vec![2u8; size as usize / 2], 0).unwrap();
    image.flush().unwrap();
    assert_eq!(on_disk(), (0, 0));

    image.apply_snapshot_deferring_free("a").unwrap();
    assert_eq!(read_all(&image), at_a);
    // Nothing synced yet: on disk the header is the old one and the old
    // tree whole (what of the new table and references reached the disk
    // is leaked), nothing worse.
    assert_eq!(on_disk().0, 0);
    // The guest writes meanwhile (copy-on-write out of the snapshot's
    // clusters, into clusters the old tree does not hold).
    image
        .write_at(&vec![3u8; 3 * cluster_size as usize], 0)
        .unwrap();
    let mut model = at_a.clone();
    model[..3 * cluster_size as usize].fill(3);
    assert_eq!(read_all(&image), model);
    assert_eq!(on_disk().0, 0);

    assert_eq!(image.free_replaced_trees().unwrap(), 1);
    assert_eq!(image.free_replaced_trees().unwrap(), 0);
    image.flush().unwrap();
    assert_eq!(on_disk(), (0, 0));
    assert_eq!(read_all(&image), model);

    // Two deferred reverts in a row: the second frees the first's tree
    // before it switches; a flush frees its own.
    image.apply_snapshot_deferring_free("a").unwrap();
    image.apply_snapshot_deferring_free("a").unwrap();
    assert_eq!(read_all(&image), at_a);
    image.flush().unwrap();
    assert_eq!(on_disk(), (0, 0));
    assert_eq!(image.free_replaced_trees().unwrap(), 0);

    // A tree left pending is freed when the image is closed.
    image.write_at(&vec![4u8; size as usize], 0).unwrap();
    image.apply_snapshot_deferring_free("a").unwrap();
    image.close().unwrap();
    assert_eq!(on_disk(), (0, 0));
    if qemu() {
        qemu_check(&path);
        assert!(qemu_read_snapshot(&path, "a", size) == at_a);
    }
}

/// A file that records its writes (offset) and syncs, in order.
struct Recording {
    inner: FileStorage,
    events: std::sync::Mutex<Vec<Option<u64>>>,
}

impl Storage for Recording {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> qcow::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> qcow::Result<()> {
        self.events.lock().unwrap().push(Some(offset));
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> qcow::Result<()> {
        self.events.lock().unwrap().push(None);
        self.inner.flush()
    }
    fn len(&self) -> qcow::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> qcow::Result<()> {
        self.inner.set_len(len)
    }
}

/// The guest's first flush after a deferred revert (`flush_metadata`, as
/// virtio-blk flushes) writes the revert's refcounts, the guest's
/// copy-on-write tables and the header with two syncs: one after every
/// write before the header, one after the header before anything else.
/// The old tree waits for `free_replaced_trees` (leaks on disk until the
/// next flush, nothing worse), and the image reads back as the guest
/// wrote it.
#[test]
fn the_guest_flush_after_a_deferred_revert_syncs_twice_in_order() {
    let cluster_size = 65536u64;
    let size = 4u64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qcow2");
    let open_file = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap()
    };
    let recording = Arc::new(Recording {
        inner: FileStorage::new(open_file()),
        events: Default::default(),
    });
    let opts = CreateOptions {
        size,
        cluster_size,
        ..Default::default()
    };
    let image: Qcow2 = create(recording.clone(), None, None, &opts).unwrap();
    let on_disk = || {
        let file: Arc<dyn Storage> = Arc::new(FileStorage::new(open_file()));
        let report = qcow::check::check(&*file, None, qcow::check::Repair::None).unwrap();
        (report.corruptions, report.leaks)
    };
    let read_all = |image: &Qcow2| {
        let mut buf = vec![0u8; size as usize];
        image.read_at(&mut buf, 0).unwrap();
        buf
    };
    image.write_at(&vec![1u8; size as usize], 0).unwrap();
    image.create_snapshot("a").unwrap();
    image.write_at(&[2u8; 512], 4096).unwrap();
    image.flush().unwrap();
    let mut model = read_all(&image);
    model[4096..4608].fill(1);

    image.apply_snapshot_deferring_free("a").unwrap();
    image.write_at(&[3u8; 512], 8192).unwrap();
    model[8192..8704].fill(3);
    recording.events.lock().unwrap().clear();
    assert!(image.flush_metadata().unwrap());
    let events = std::mem::take(&mut *recording.events.lock().unwrap());
    let syncs = events.iter().filter(|e| e.is_none()).count();
    assert_eq!(syncs, 2, "{events:?}");
    let header = events
        .iter()
        .position(|&e| e == Some(0))
        .expect("the header is written");
    assert_eq!(
        events[header - 1],
        None,
        "a sync before the header: {events:?}"
    );
    assert_eq!(
        events[header + 1],
        None,
        "a sync after the header: {events:?}"
    );
    // Written before the header: the refcounts and the new L2 table.
    assert!(events[..header].iter().filter(|e| e.is_some()).count() >= 2);
    let (corruptions, leaks) = on_disk();
    assert_eq!(corruptions, 0);
    assert!(leaks > 0, "the old tree waits to be freed");
    // Freeing it now needs no sync (the header is on disk): its
    // decrements go out with the next flush.
    recording.events.lock().unwrap().clear();
    assert_eq!(image.free_replaced_trees().unwrap(), 1);
    assert!(recording.events.lock().unwrap().is_empty());
    assert!(on_disk().1 > 0);
    {
        let file: Arc<dyn Storage> = Arc::new(FileStorage::new(open_file()));
        let reopened = Qcow2::open(file, false, &qcow::fs::FileOpener::for_image(&path)).unwrap();
        assert!(
            read_all(&reopened) == model,
            "the header on disk is the new one"
        );
    }
    assert!(image.flush_metadata().unwrap());
    assert_eq!(on_disk(), (0, 0));
    assert!(read_all(&image) == model);
    image.close().unwrap();
    if qemu() {
        qemu_check(&path);
    }
}
