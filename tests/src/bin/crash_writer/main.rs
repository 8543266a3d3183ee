//! The child of the kill -9 harness (`tests/tests/kill9.rs`): opens or
//! creates a qcow2 image with the qcow library and runs the operation
//! stream of `workload.rs` on it until it is killed, logging its progress.
//!
//! Usage: `crash_writer IMAGE LOG SEED ROUND MAX_OPS [create SIZE
//! CLUSTER_SIZE REFCOUNT_BITS LAZY EXTENDED_L2 VERSION]`
//!
//! The log gets one line per event, each written with a single `write` on
//! a file opened with `O_APPEND` before the child goes on (a kill -9 loses
//! nothing the kernel already has, so no fsync is needed):
//! - `snapshots NAME,...` once the image is open (its snapshot list);
//! - `start N` before operation N;
//! - `flushed N` after operation N, a flush, returned;
//! - `done N` after the last operation and a final flush, if the child
//!   lives that long.
//!
//! Any error is printed and ends the child with status 2.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use integration_tests::workload::{fill, Op, Params, Workload};
use qcow::create::CreateOptions;
use qcow::fs::{open_image, AnyImage, Format};
use qcow::image::Qcow2;
use qcow::{FileStorage, Storage};

struct Log(std::fs::File);

impl Log {
    fn line(&mut self, text: String) -> Result<()> {
        // One write per line: the parent never sees half a line... except
        // after a kill in the middle of this call, which it ignores.
        self.0
            .write_all(format!("{text}\n").as_bytes())
            .context("writing the log")
    }
}

fn parse<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i)
        .with_context(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {what}: {:?}", args[i]))
}

fn create_image(path: &Path, args: &[String]) -> Result<Qcow2> {
    let opts = CreateOptions {
        size: parse(args, 7, "SIZE")?,
        cluster_size: parse(args, 8, "CLUSTER_SIZE")?,
        refcount_bits: parse(args, 9, "REFCOUNT_BITS")?,
        lazy_refcounts: parse::<u8>(args, 10, "LAZY")? != 0,
        extended_l2: parse::<u8>(args, 11, "EXTENDED_L2")? != 0,
        version: parse(args, 12, "VERSION")?,
        ..CreateOptions::default()
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
    Ok(qcow::create::create(storage, None, None, &opts)?)
}

fn run(args: &[String]) -> Result<()> {
    let image_path = Path::new(args.get(1).context("missing IMAGE")?);
    let log_path = Path::new(args.get(2).context("missing LOG")?);
    let seed: u64 = parse(args, 3, "SEED")?;
    let round: u32 = parse(args, 4, "ROUND")?;
    let max_ops: u64 = parse(args, 5, "MAX_OPS")?;
    let image = match args.get(6).map(String::as_str) {
        Some("create") => create_image(image_path, args)?,
        None => match open_image(image_path, Some(Format::Qcow2), true)? {
            AnyImage::Qcow2(q) => *q,
            _ => bail!("not a qcow2 image"),
        },
        Some(other) => bail!("unknown mode {other:?}"),
    };
    let mut log = Log(OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?);
    let existing: Vec<String> = image.snapshots()?.into_iter().map(|s| s.name).collect();
    log.line(format!("snapshots {}", existing.join(",")))?;
    let refcount_bits = image.header_cluster().header.refcount_bits();
    let params = Params {
        cluster_size: image.cluster_size(),
        size: image.size(),
        snapshots: refcount_bits > 1,
        round,
    };
    let mut workload = Workload::new(seed, params, existing);
    let mut buf = Vec::new();
    for _ in 0..max_ops {
        let (index, op) = workload.next_op();
        log.line(format!("start {index}"))?;
        let what = || format!("operation {index} ({op:?})");
        match &op {
            Op::Write { offset, len } => {
                buf.resize(*len as usize, 0);
                fill(seed, round, index, *offset, false, &mut buf);
                image.write_at(&buf, *offset).with_context(what)?;
            }
            Op::Zero { offset, len, unmap } => {
                image
                    .write_zeroes(*offset, *len, *unmap)
                    .with_context(what)?;
            }
            Op::Discard { offset, len } => image.discard(*offset, *len).with_context(what)?,
            Op::Compressed { cluster } => {
                let cs = image.cluster_size();
                buf.resize(cs as usize, 0);
                fill(seed, round, index, cluster * cs, true, &mut buf);
                image.write_compressed(*cluster, &buf).with_context(what)?;
            }
            Op::Flush => {
                image.flush().with_context(what)?;
                log.line(format!("flushed {index}"))?;
            }
            Op::SnapshotCreate { name } => {
                image.create_snapshot(name).with_context(what)?;
            }
            Op::SnapshotDelete { name } => image.delete_snapshot(name).with_context(what)?,
            Op::Fill { .. } => bail!("the workload never fills"),
        }
    }
    image.flush()?;
    log.line(format!("done {max_ops}"))?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = run(&args) {
        eprintln!("crash_writer: {e:#}");
        std::process::exit(2);
    }
}
