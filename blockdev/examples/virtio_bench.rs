//! IOPS through the virtio-blk device model against the same backend
//! driven directly (the engine of `img bench`), alternating the two and
//! printing each run and the median ratio.
//!
//! ```text
//! cargo run --release -p blockdev --example virtio_bench -- IMAGE \
//!     [--depth 32] [--count 200000] [--write] [--random | --step BYTES]
//!     [--cache none] [--pairs 3]
//!     [--model-only | --direct-only] [--no-warmup] [--guest-thread]
//! cargo run --release -p blockdev --example virtio_bench -- --mem 256M [...]
//! ```
//!
//! With `--mem SIZE` the backend is the in-memory test disk (no direct
//! comparison: it has no io_uring engine of its own worth comparing).
//!
//! The direct engine has no random mode (neither has `img bench`): with
//! `--random` its side stays sequential, so the ratio is not like for
//! like. `--step BYTES` sets the same stride on both sides (a stride over
//! the request size defeats merging on both, as `img bench -S`).

use std::path::PathBuf;
use std::sync::Arc;

use blockdev::backend::{open, OpenOptions};
use blockdev::bench::BenchConfig;
use blockdev::disk::{BlockBackend, CacheMode};
use blockdev::virtio::bench::{run, BenchOptions};
use blockdev::virtio::testing::{MemDisk, MemDiskOptions};

fn parse_size(text: &str) -> Option<usize> {
    let (digits, shift) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 10),
        'M' | 'm' => (&text[..text.len() - 1], 20),
        'G' | 'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<usize>().ok().map(|n| n << shift)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path: Option<PathBuf> = None;
    let mut mem: Option<usize> = None;
    let mut options = BenchOptions {
        requests: 200_000,
        depth: 32,
        random: false,
        ..Default::default()
    };
    let mut cache = CacheMode::Writeback;
    let mut pairs = 3;
    let mut model_only = false;
    let mut direct_only = false;
    let mut warmup = true;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--depth" => options.depth = value()?.parse()?,
            "--count" => options.requests = value()?.parse()?,
            "--write" => options.write = true,
            "--model-only" => model_only = true,
            "--direct-only" => direct_only = true,
            "--no-warmup" => warmup = false,
            "--random" => options.random = true,
            "--step" => {
                let step: u64 = value()?.parse()?;
                let size = u64::from(options.request_size);
                if step == 0 || !step.is_multiple_of(size) {
                    return Err(format!("--step must be a multiple of {size}").into());
                }
                options.stride = step / size;
            }
            "--guest-thread" => options.guest_thread = true,
            "--pairs" => pairs = value()?.parse()?,
            "--cache" => {
                cache = match value()?.as_str() {
                    "none" => CacheMode::None,
                    _ => CacheMode::Writeback,
                }
            }
            "--mem" => mem = Some(parse_size(&value()?).ok_or("bad --mem size")?),
            _ => path = Some(PathBuf::from(arg)),
        }
    }
    let backend: Arc<dyn BlockBackend> = match (&path, mem) {
        (_, Some(size)) => Arc::new(MemDisk::new(size, MemDiskOptions::default())),
        (Some(path), None) => open(
            path,
            &OpenOptions {
                cache,
                ..Default::default()
            },
        )?,
        (None, None) => return Err("give an image path or --mem SIZE".into()),
    };
    let direct = BenchConfig {
        count: u32::try_from(options.requests)?,
        depth: u32::from(options.depth),
        buffer_size: options.request_size,
        offset: 0,
        step: u64::from(options.request_size) * options.stride,
        write: options.write,
        ..Default::default()
    };
    if options.random && mem.is_none() && !model_only {
        eprintln!(
            "note: the direct side is sequential; with --random the ratio is not like for like"
        );
    }
    let mut ratios = Vec::new();
    if mem.is_none() && warmup {
        // Untimed: bring the image into the page cache (and its metadata
        // into the backend's caches) before either side is measured.
        blockdev::bench::run(&*backend, &direct)?;
    }
    for pair in 0..pairs {
        if direct_only && mem.is_none() {
            let elapsed = blockdev::bench::run(&*backend, &direct)?;
            let iops = options.requests as f64 / elapsed.as_secs_f64();
            println!("run {pair}: direct {iops:.0} IOPS");
            continue;
        }
        if mem.is_some() || model_only {
            let virtio = run(backend.clone(), &options)?;
            let kicks = if options.guest_thread {
                format!(
                    ", {:.3} kicks a request",
                    virtio.kicks as f64 / virtio.requests as f64
                )
            } else {
                String::new()
            };
            println!("run {pair}: device model {:.0} IOPS{kicks}", virtio.iops);
            continue;
        }
        // Alternate which side goes first; sync after writes so that one
        // run's writeback does not land in the next.
        let settle = || {
            if options.write {
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
            }
        };
        let mut virtio_iops = 0.0;
        let mut direct_iops = 0.0;
        for side in 0..2 {
            if (side + pair) % 2 == 0 {
                virtio_iops = run(backend.clone(), &options)?.iops;
            } else {
                let elapsed = blockdev::bench::run(&*backend, &direct)?;
                direct_iops = options.requests as f64 / elapsed.as_secs_f64();
            }
            settle();
        }
        let ratio = virtio_iops / direct_iops;
        println!(
            "run {pair}: device model {virtio_iops:.0} IOPS, direct {direct_iops:.0} IOPS, ratio {ratio:.2}"
        );
        ratios.push(ratio);
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        let median = if ratios.len() % 2 == 0 {
            (ratios[mid - 1] + ratios[mid]) / 2.0
        } else {
            ratios[mid]
        };
        println!("median ratio {median:.2}");
    }
    backend.close()?;
    Ok(())
}
