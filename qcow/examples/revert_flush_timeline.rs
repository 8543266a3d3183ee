//! The disk side of a VMM's revert, timed: what a guest's first flush after
//! `apply_snapshot_deferring_free` waits for when the snapshot caught the
//! guest between its write and its flush (the write is replayed after the
//! revert, copying on write, and the flush follows at once), while the
//! VMM's controller frees the replaced tree after its answer.
//!
//! `cargo run --release -p qcow --example revert_flush_timeline -- DIR
//! [--runs 5] [--free-delay-us 0] [--no-free]`: in DIR (on the disk to
//! measure) a 64 MiB qcow2 image with a few written clusters, then per
//! run: a write and its flush (the guest's step), a snapshot, another
//! step, the deferred revert; then at once, on two threads, the guest's
//! replayed write and flush (`flush_metadata`, as virtio-blk's flush) and,
//! after `--free-delay-us`, `free_replaced_trees` (the controller; left
//! out with `--no-free`). Prints every fdatasync and header write with
//! its thread and times from the revert's end, and per run the guest
//! side's write and flush times.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qcow::fs::{open_storage, FileOpener};
use qcow::image::Qcow2;
use qcow::{Result, Storage};

/// A file that records its syncs and header writes.
struct Timed {
    inner: Arc<dyn Storage>,
    start: Mutex<Instant>,
    events: Mutex<Vec<String>>,
}

impl Timed {
    fn ms(&self) -> f64 {
        self.start.lock().unwrap().elapsed().as_secs_f64() * 1000.0
    }
    fn note(&self, what: String) {
        let who = std::thread::current().name().unwrap_or("?").to_string();
        self.events.lock().unwrap().push(format!("{who:>6} {what}"));
    }
}

impl Storage for Timed {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset == 0 {
            self.note(format!("{:8.3} ms  header write", self.ms()));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        let t = self.ms();
        let r = self.inner.flush();
        self.note(format!("{t:8.3} ms  fdatasync {:.3} ms", self.ms() - t));
        r
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.inner.set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.allocate(offset, len)
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn step(image: &Qcow2, k: u64) {
    let mut sector = vec![0u8; 512];
    sector[..8].copy_from_slice(&k.to_le_bytes());
    image.write_at(&sector, k * 512).expect("write");
    image.flush_metadata().expect("flush");
    // What flush_metadata leaves to the caller.
    image.flush().expect("flush");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .expect("usage: revert_flush_timeline DIR [--runs N]"),
    );
    let runs = arg(&args, "--runs", 5);
    let free_delay = Duration::from_micros(arg(&args, "--free-delay-us", 0));
    let free = !args.iter().any(|a| a == "--no-free");
    let path = dir.join("timeline.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(status.success());
    let timed = Arc::new(Timed {
        inner: open_storage(&path, true).expect("open"),
        start: Mutex::new(Instant::now()),
        events: Mutex::new(Vec::new()),
    });
    let image = Arc::new(
        Qcow2::open(
            timed.clone(),
            true,
            &FileOpener::for_image(Path::new(&path)),
        )
        .expect("qcow2"),
    );
    for k in 0..64 {
        step(&image, k * 128);
    }
    let mut k = 10_000;
    for run in 0..runs {
        step(&image, k);
        image.create_snapshot(&format!("s{run}")).expect("snapshot");
        k += 1;
        step(&image, k);
        image
            .apply_snapshot_deferring_free(&format!("s{run}"))
            .expect("revert");
        timed.events.lock().unwrap().clear();
        *timed.start.lock().unwrap() = Instant::now();
        let guest = {
            let image = image.clone();
            std::thread::Builder::new()
                .name("guest".into())
                .spawn(move || {
                    let t = Instant::now();
                    let mut sector = vec![0u8; 512];
                    sector[..8].copy_from_slice(&k.to_le_bytes());
                    image.write_at(&sector, k * 512).expect("write");
                    let wrote = t.elapsed();
                    if !image.flush_metadata().expect("flush") {
                        image.flush().expect("data flush");
                    }
                    (wrote, t.elapsed())
                })
                .expect("thread")
        };
        let ctl = {
            let image = image.clone();
            std::thread::Builder::new()
                .name("ctl".into())
                .spawn(move || {
                    std::thread::sleep(free_delay);
                    let t = Instant::now();
                    if free {
                        image.free_replaced_trees().expect("free");
                    }
                    t.elapsed()
                })
                .expect("thread")
        };
        let (wrote, flushed) = guest.join().expect("guest");
        let freed = ctl.join().expect("ctl");
        for line in timed.events.lock().unwrap().iter() {
            println!("  {line}");
        }
        println!(
            "run {}: guest write {:.3} ms, write+flush {:.3} ms; free {:.3} ms",
            run + 1,
            wrote.as_secs_f64() * 1000.0,
            flushed.as_secs_f64() * 1000.0,
            freed.as_secs_f64() * 1000.0
        );
        image.flush().expect("flush");
        k += 1;
    }
}
