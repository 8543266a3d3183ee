//! `clone --original DOMAIN --name NEW --from-snapshot SNAP [--auto-clone]
//! [--file PATH]... [--running] [--paused]`: NEW starts from full snapshot
//! SNAP of DOMAIN, which may run on meanwhile (or be paused or shut off).
//! Its disks are always linked (`--linked` is implied).
//!
//! For every disk the snapshot covers (the writable qcow2 ones), the
//! snapshot's contents are extracted through our image engine (`img
//! convert -U -l snapshot.name=SNAP`: its clusters do not change while
//! DOMAIN's VMM writes the image, which it holds locked) into a read-only
//! base, and a qcow2 overlay on that base becomes NEW's disk (the path
//! `--file` gives, in order, or virt-clone's made-up one; the base is the
//! overlay's path with `-base` before its extension). Read-only disks and
//! cdroms are shared. NEW gets a new UUID and new MACs, is defined, and
//! its VMM builds the VM from the state in DOMAIN's first disk (vm.restore
//! with `qcow2-image://PATH#SNAP`, read, bounded and checked by the VMM
//! as any in-image state), then runs it or leaves it paused as
//! `snapshot-revert` would (`--running`, `--paused`, else the snapshot's
//! state). DOMAIN's store lock is held throughout, so no `vm` command
//! deletes or replaces the snapshot under the fork. A failure removes
//! NEW's definition and every file made.

use std::path::{Path, PathBuf};

use super::clone::{claim_new_name, clone_path, give_new_macs, img};
use super::snapshot::{
    not_found, read_set, snapshot_disks, PAUSED_FROM_SNAPSHOT, RUNNING_FROM_SNAPSHOT, STATE_TIMEOUT,
};
use super::{lifecycle, lookup_by, By, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::state;
use crate::vm::xml::{DiskFormat, DomainDef, Uuid};

/// One disk of the fork: the snapshot of `from` extracted into `base`,
/// and `overlay` on it, NEW's disk.
struct ForkDisk {
    disk: usize,
    from: String,
    base: PathBuf,
    overlay: PathBuf,
}

/// The base beside `overlay`: `DIR/STEM-base.EXT`.
fn base_path(overlay: &Path) -> PathBuf {
    let name = overlay
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let based = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 7 => {
            format!("{stem}-base.{ext}")
        }
        _ => format!("{name}-base"),
    };
    overlay.with_file_name(based)
}

/// QEMU's option syntax for a value: every comma doubled.
fn option_value(text: &str) -> String {
    text.replace(',', ",,")
}

fn path_taken(path: &Path) -> VmError {
    VmError::Refused(format!(
        "Could not use path '{}' for cloning: the file exists",
        path.display()
    ))
}

/// `clone --from-snapshot`.
pub fn fork(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let original = inv.value("original").ok_or_else(|| {
        VmError::Refused(
            "An original machine name is required, use '--original ORIGINAL_GUEST' and try again."
                .into(),
        )
    })?;
    let snapshot = inv.value("from-snapshot").expect("dispatched on it");
    let files = inv.argv();
    let auto = inv.flag("auto-clone");
    if files.is_empty() && !auto {
        return Err(VmError::Refused(
            "Either --auto-clone or --file is required, use '--auto-clone or --file' and try again."
                .into(),
        ));
    }
    if inv.flag("running") && inv.flag("paused") {
        return Err(VmError::Refused(
            "Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' and 'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive"
                .into(),
        ));
    }
    let orig = lookup_by(ctx, original, By::ALL)
        .map_err(|_| VmError::Refused(format!("Domain '{original}' was not found.")))?;
    let _orig_lock = ctx.store.lock(&orig.name)?;
    let set = read_set(&ctx.store, &orig.name)?;
    let meta = set
        .snapshots
        .get(snapshot)
        .ok_or_else(|| not_found(snapshot))?;
    if meta.state == "shutoff" {
        return Err(VmError::Refused(format!(
            "snapshot '{snapshot}' of domain '{}' holds no VM state (it was taken shut off, disks only): a fork needs a snapshot of a running or paused domain",
            orig.name
        )));
    }
    let run_after = inv.flag("running") || (meta.state == "running" && !inv.flag("paused"));

    let (new_name, _new_lock) = claim_new_name(ctx, inv, &orig.name, auto)?;

    // Plan every disk before touching anything: the snapshot covers the
    // writable qcow2 disks (any other writable disk is refused here).
    snapshot_disks(&orig)?;
    let state_image = match orig.disks.first() {
        Some(disk) if !disk.is_readonly() => disk.source.clone().unwrap_or_default(),
        _ => {
            return Err(VmError::Unsupported(format!(
                "domain '{}' has no writable first disk to hold a VM state",
                orig.name
            )))
        }
    };
    let state_image = std::fs::canonicalize(&state_image)
        .map_err(|e| VmError::OperationFailed(format!("'{state_image}': {e}")))?;
    let mut plans = Vec::new();
    let mut given = files.iter();
    for (index, disk) in orig.disks.iter().enumerate() {
        let Some(source) = disk.source.clone() else {
            continue;
        };
        if disk.is_readonly() {
            continue;
        }
        let overlay = match given.next() {
            Some(path) => PathBuf::from(path),
            None if auto => clone_path(&source, orig.name.as_str(), new_name.as_str(), "clone"),
            None => {
                return Err(VmError::Refused(format!(
                    "A disk path must be specified to clone '{source}'."
                )))
            }
        };
        let base = base_path(&overlay);
        for path in [&overlay, &base] {
            if path.exists() {
                return Err(path_taken(path));
            }
        }
        if plans.iter().any(|p: &ForkDisk| {
            [&p.overlay, &p.base].contains(&&overlay) || [&p.overlay, &p.base].contains(&&base)
        }) {
            return Err(VmError::Refused(format!(
                "Could not use path '{}' for cloning: given for two disks",
                overlay.display()
            )));
        }
        plans.push(ForkDisk {
            disk: index,
            from: source,
            base,
            overlay,
        });
    }

    let mut made: Vec<PathBuf> = Vec::new();
    let mut defined = false;
    let result = (|| {
        let spec = format!("snapshot.name={}", option_value(snapshot));
        for plan in &plans {
            let base = std::path::absolute(&plan.base)
                .map_err(|e| VmError::OperationFailed(format!("'{}': {e}", plan.base.display())))?;
            let base_text = base.to_string_lossy().into_owned();
            // The snapshot's clusters do not change while the original's
            // VMM runs on, holding the image's write lock: read it shared.
            made.push(plan.base.clone());
            img(&[
                "convert", "-U", "-f", "qcow2", "-O", "qcow2", "-l", &spec, &plan.from, &base_text,
            ])?;
            read_only(&base)?;
            made.push(plan.overlay.clone());
            img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &base_text,
                "-F",
                "qcow2",
                &plan.overlay.to_string_lossy(),
            ])?;
        }
        // The VMM locks the overlays and bases itself: the img commands'
        // locks ended with their images.
        let mut new_def: DomainDef = orig.clone();
        new_def.name = new_name.clone();
        new_def.uuid =
            Uuid::generate().map_err(|e| VmError::Internal(format!("cannot make a UUID: {e}")))?;
        give_new_macs(ctx, &mut new_def)?;
        for plan in &plans {
            let disk = &mut new_def.disks[plan.disk];
            disk.source = Some(plan.overlay.to_string_lossy().into_owned());
            disk.format = Some(DiskFormat::Qcow2);
        }
        ctx.store.write_definition(&new_def)?;
        defined = true;
        let url = vmapi::fork_url(&state_image, snapshot);
        lifecycle::launch_with(&new_def, ctx, &|client| {
            client
                .clone()
                .with_io_timeout(STATE_TIMEOUT)
                .restore(&url)?;
            if run_after {
                client.resume()?;
                Ok((state::RUNNING, RUNNING_FROM_SNAPSHOT))
            } else {
                Ok((state::PAUSED, PAUSED_FROM_SNAPSHOT))
            }
        })
    })();
    if let Err(e) = result {
        if defined {
            let _ = ctx.store.remove_definition(&new_name);
        }
        for path in &made {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    for plan in &plans {
        ctx.extra(
            out,
            &format!(
                "Disk '{}' at snapshot '{snapshot}' is now the read-only base '{}' of '{}'\n",
                plan.from,
                plan.base.display(),
                plan.overlay.display()
            ),
        );
    }
    ctx.extra(
        out,
        &format!(
            "Domain '{new_name}' started from snapshot '{snapshot}' of '{}', {}\n",
            orig.name,
            if run_after { "running" } else { "paused" }
        ),
    );
    ctx.extra(
        out,
        &format!("\nClone '{new_name}' created successfully.\n"),
    );
    Ok(())
}

/// Makes a base read-only (mode 0444): only its overlays read it.
fn read_only(path: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| VmError::OperationFailed(format!("'{}': {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_sit_beside_their_overlays() {
        assert_eq!(
            base_path(Path::new("/i/new.qcow2")),
            PathBuf::from("/i/new-base.qcow2")
        );
        assert_eq!(
            base_path(Path::new("/i/disk")),
            PathBuf::from("/i/disk-base")
        );
        assert_eq!(
            base_path(Path::new("/i/.hidden")),
            PathBuf::from("/i/.hidden-base")
        );
        assert_eq!(option_value("a,b"), "a,,b");
    }
}
