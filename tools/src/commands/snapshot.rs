//! `img snapshot`.

use anyhow::{anyhow, Result};
use qcow::fs::AnyImage;

use super::io_reason;
use crate::cli::{SnapshotAction, SnapshotArgs};
use crate::report::info::{snapshot_table_header, SnapshotInfo};
use crate::report::localtime::format_local;

/// Runs `img snapshot`.
pub fn run(args: &SnapshotArgs) -> Result<i32> {
    let action = args.action().map_err(|e| anyhow!("{e}"))?;
    let writable = action != SnapshotAction::List;
    // -U on a snapshot change is refused, as QEMU refuses force-share on
    // a writable image.
    let how = super::locks::ImageUse::new(writable, args.force_share);
    let image = super::open_named_for(&args.filename, args.format.as_deref(), how, false)?;
    let AnyImage::Qcow2(q) = &image else {
        return Err(anyhow!(
            "Could not open '{}': internal snapshots are not supported by the raw format",
            args.filename
        ));
    };
    let fail = |what: &str, e: qcow::Error| anyhow!("Could not {what}: {}", reason(&e));
    // A name is echoed whole unless it would swamp the line.
    let shown = |name: &str| -> String {
        if name.chars().count() > 64 {
            format!("{}...", name.chars().take(64).collect::<String>())
        } else {
            name.to_string()
        }
    };
    match action {
        SnapshotAction::List => {
            let snapshots = q.snapshots().map_err(|e| fail("list snapshots", e))?;
            if !snapshots.is_empty() {
                println!("Snapshot list:");
                println!("{}", snapshot_table_header());
                for s in &snapshots {
                    let info = SnapshotInfo {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        vm_state_size: s.vm_state_size,
                        date_sec: s.date_sec.into(),
                        date_nsec: s.date_nsec,
                        vm_clock_sec: (s.vm_clock_nsec / 1_000_000_000) as i64,
                        vm_clock_nsec: (s.vm_clock_nsec % 1_000_000_000) as u32,
                        icount: s.icount,
                    };
                    println!("{}", info.table_row(&format_local));
                }
            }
        }
        SnapshotAction::Create(name) => {
            q.create_snapshot(&name)
                .map_err(|e| fail(&format!("create snapshot '{}'", shown(&name)), e))?;
        }
        SnapshotAction::Apply(name) => {
            q.apply_snapshot(&name).map_err(|e| match &e {
                // qcow2_snapshot_goto reports the table's fault itself and
                // returns its errno, which bdrv_snapshot_goto words as
                // "Failed to load snapshot".
                qcow::Error::SnapshotL1Refused { .. } => {
                    eprintln!("{}: {e}", crate::program());
                    anyhow!(
                        "Could not apply snapshot '{}': Failed to load snapshot: {}",
                        shown(&name),
                        errno_text(&e)
                    )
                }
                // qcow2_snapshot_goto returns ENOENT without a message.
                qcow::Error::SnapshotNotFound { .. } => anyhow!(
                    "Could not apply snapshot '{}': Failed to load snapshot: No such file or \
                     directory",
                    shown(&name)
                ),
                _ => fail(&format!("apply snapshot '{}'", shown(&name)), e),
            })?;
        }
        SnapshotAction::Delete(name) => {
            q.delete_snapshot(&name).map_err(|e| match &e {
                // qcow2_snapshot_delete's own words.
                qcow::Error::SnapshotNotFound { .. } => anyhow!(
                    "Could not delete snapshot '{}': snapshot not found",
                    shown(&name)
                ),
                _ => fail(&format!("delete snapshot '{}'", shown(&name)), e),
            })?;
        }
    }
    image.flush()?;
    Ok(0)
}

/// Why a snapshot operation failed, as qemu-img says it: its qcow2 driver
/// fails these with an errno, which qemu-img prints as the errno's text
/// (a refcount that would overflow is EINVAL, a full snapshot table or an
/// image out of address space EFBIG).
fn reason(e: &qcow::Error) -> String {
    match e {
        qcow::Error::RefcountRange { .. } => "Invalid argument".to_string(),
        qcow::Error::NoSpace(_) => "File too large".to_string(),
        // QEMU allocates the missing refcount block, then fails with
        // EAGAIN (qemu-iotests 080).
        qcow::Error::RefcountBlockMissing { .. } => "Resource temporarily unavailable".to_string(),
        other => io_reason(other),
    }
}

/// Why a snapshot could not be opened read-only (`convert -l`, `measure
/// -l`), as qemu-img words it after "Failed to load snapshot: ": a missing
/// one in qcow2_snapshot_load_tmp's words, which name no snapshot.
pub fn load_failure(e: &qcow::Error) -> String {
    match e {
        qcow::Error::SnapshotNotFound { .. } => "Can't find snapshot".to_string(),
        other => io_reason(other),
    }
}

/// The errno text QEMU's qcow2 driver returns with a refused snapshot L1
/// table: EFBIG for its size, EINVAL for its offset.
pub fn errno_text(e: &qcow::Error) -> &'static str {
    match e {
        qcow::Error::SnapshotL1Refused {
            field: "l1_size", ..
        } => "File too large",
        _ => "Invalid argument",
    }
}
