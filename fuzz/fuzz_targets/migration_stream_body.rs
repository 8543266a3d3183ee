//! The body of the `migration_stream` fuzz target, shared with the stable
//! test that replays inputs (vmm/tests/migration_fuzz_regressions.rs), so
//! both run exactly the same steps.
//!
//! An input is what a migration's destination reads from its source after
//! the configuration was accepted: the stream header, then frames (RAM
//! runs, Disk chunks, the machine's state, the switch) for a VM of 1
//! vCPU, 1 MiB of RAM and one disk. The receiver copies storage: its plan
//! (parsed as the destination parses one) creates two 1 MiB images in a
//! folder of this process under the temporary directory (tmpfs on
//! /dev/shm when there is one), a qcow2 with 64 KiB clusters (disk 0)
//! and a raw one (disk 1), so Disk frames reach both writers. Every error
//! must be one line; RAM must land only in the VM's RAM, disk data only
//! inside its disk; an accepted stream's images are closed and named as
//! at the switch, and after every input (the migration never keeps them)
//! nothing is left in the folder.

use std::path::PathBuf;

use vmm::config::{DiskCache, DiskConfig};
use vmm::migration::storage::{
    ChunkBody, CopiedFormat, DiskChunk, DiskPlan, StorageMode, StoragePlan,
};
use vmm::migration::storage_receive::IncomingStorage;
use vmm::migration::{receive, stream};
use vmm::state::machine::ConfigSummary;

/// Bytes of each copied disk.
pub const DISK_SIZE: u64 = 1 << 20;

/// The storage plan every input is received with.
pub fn storage_plan() -> StoragePlan {
    let qcow2 = DiskPlan {
        format: CopiedFormat::Qcow2,
        size: DISK_SIZE,
        cluster_size: 64 << 10,
        version: 3,
        refcount_bits: 16,
        extended_l2: false,
        backing_file: None,
        backing_format: None,
    };
    let raw = DiskPlan {
        format: CopiedFormat::Raw,
        size: DISK_SIZE,
        cluster_size: 0,
        version: 0,
        refcount_bits: 0,
        extended_l2: false,
        backing_file: None,
        backing_format: None,
    };
    StoragePlan {
        mode: StorageMode::All,
        disks: vec![qcow2, raw],
    }
}

/// The folder this process's images are created in.
fn image_dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    // One folder per thread: the replay tests run inputs on parallel
    // threads of one process, and an accepted input names its images.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let dir = base.join(format!(
        "migration_stream_fuzz-{}-{}",
        std::process::id(),
        THREAD.with(|t| *t)
    ));
    std::fs::create_dir_all(&dir).expect("the fuzz image folder");
    dir
}

fn disk_configs(dir: &std::path::Path) -> Vec<DiskConfig> {
    ["disk0.qcow2", "disk1.raw"]
        .iter()
        .enumerate()
        .map(|(i, name)| DiskConfig {
            path: dir.join(name),
            format: None,
            readonly: false,
            cache: DiskCache::Writeback,
            id: format!("_disk{i}"),
        })
        .collect()
}

/// The VM the inputs are received into.
pub fn summary() -> ConfigSummary {
    ConfigSummary {
        cpus: 1,
        memory: 1 << 20,
        disks: 1,
        nets: 1,
    }
}

fn one_line(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
}

/// Runs one input; whether it was accepted up to the switch.
pub fn migration_stream_body(data: &[u8]) -> bool {
    let mut input = data;
    if let Err(e) = stream::read_header(&mut input) {
        one_line(&e);
        return false;
    }
    let mem = vmm::vm::map_guest_memory(summary().memory).expect("1 MiB of guest memory");
    let dir = image_dir();
    let plan = StoragePlan::parse(&storage_plan().to_json(), 2).expect("the fuzz storage plan");
    let mut storage = IncomingStorage::create(&plan, &disk_configs(&dir))
        .expect("creating the fuzz images")
        .expect("a copied plan");
    let mut offset = 12;
    let accepted = match receive::receive_state(
        &mut input,
        &mut offset,
        summary(),
        &mem,
        Some(&mut storage),
    ) {
        Ok(received) => {
            assert!(offset <= data.len() as u64);
            assert_eq!(received.machine.config, summary());
            // The switch: the images are closed and named.
            storage.close().expect("closing the received images");
            true
        }
        Err(e) => {
            one_line(&e);
            false
        }
    };
    // Never kept: dropping the storage removes what it created.
    drop(storage);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("the fuzz image folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "images left behind: {left:?}");
    std::fs::remove_dir(&dir).expect("removing the empty fuzz image folder");
    accepted
}

/// A Disk frame of `chunk` appended to `out`.
pub fn write_disk(out: &mut Vec<u8>, chunk: &DiskChunk) {
    let head = chunk.head();
    let zeroes;
    let body: &[u8] = match chunk.body {
        ChunkBody::Data(d) => d,
        ChunkBody::Zeroes(n) => {
            zeroes = n.to_le_bytes();
            &zeroes
        }
    };
    stream::write_frame(out, stream::Tag::Disk, &[&head, body]).expect("disk");
}

/// Seeds: a whole stream (RAM runs, a machine state with one virtio
/// transport, the switch), the same with Disk frames (data and zeroes
/// into both images, a cluster written twice, the last sector), built
/// with `machine` (the vm_state target's machine seed), and a cancelled
/// one.
pub fn migration_stream_seeds(machine: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use stream::Tag;
    let mut whole = Vec::new();
    stream::write_header(&mut whole).expect("header");
    stream::write_ram(&mut whole, 0, &[0x11; 4096]).expect("ram");
    stream::write_ram(&mut whole, 0x8_0000, &[0x5a; 3 * 4096]).expect("ram");
    stream::write_ram(&mut whole, 0x8_0000, &[0; 4096]).expect("ram");
    stream::write_frame(&mut whole, Tag::Machine, &[machine]).expect("machine");
    stream::write_frame(&mut whole, Tag::Switch, &[&[1]]).expect("switch");
    let mut disks = Vec::new();
    stream::write_header(&mut disks).expect("header");
    stream::write_ram(&mut disks, 0x1000, &[0x22; 4096]).expect("ram");
    let data = [0xa5u8; 8192];
    let chunks = [
        (0, 0, ChunkBody::Data(&data[..])),
        (0, 0x1_0000, ChunkBody::Zeroes(0x2_0000)),
        (0, 0x3_1000, ChunkBody::Data(&data[..512])),
        (0, 0, ChunkBody::Data(&data[..4096])),
        (1, 0x8_0000, ChunkBody::Data(&data[..])),
        (1, 0x1000, ChunkBody::Zeroes(0x1000)),
        (1, DISK_SIZE - 512, ChunkBody::Data(&data[..512])),
        (0, DISK_SIZE - 512, ChunkBody::Data(&data[..512])),
    ];
    for (disk, offset, body) in chunks {
        write_disk(&mut disks, &DiskChunk { disk, offset, body });
    }
    stream::write_frame(&mut disks, Tag::Machine, &[machine]).expect("machine");
    stream::write_frame(&mut disks, Tag::Switch, &[&[0]]).expect("switch");
    let mut cancelled = Vec::new();
    stream::write_header(&mut cancelled).expect("header");
    stream::write_ram(&mut cancelled, 0xf_f000, &[1; 4096]).expect("ram");
    stream::write_frame(&mut cancelled, Tag::Cancel, &[b"timed out"]).expect("cancel");
    vec![("whole", whole), ("disks", disks), ("cancelled", cancelled)]
}

/// CRC-32 (IEEE, as the stream's frames use), bit by bit: inputs are small.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` with every whole frame's CRC made right, so that mutated
/// payloads reach the checks behind the checksum (the fuzz target and
/// the replay test run each input both as it is and so).
pub fn with_frame_crcs_fixed(data: &[u8]) -> Vec<u8> {
    let mut fixed = data.to_vec();
    let mut pos = 12;
    while pos + 9 <= fixed.len() {
        let length = u32::from_le_bytes(fixed[pos + 1..pos + 5].try_into().expect("4 bytes"));
        let Some(end) = (pos + 9).checked_add(length as usize) else {
            break;
        };
        if end > fixed.len() {
            break;
        }
        let crc = crc32(&[&fixed[pos..pos + 5], &fixed[pos + 9..end]]);
        fixed[pos + 5..pos + 9].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
    fixed
}
