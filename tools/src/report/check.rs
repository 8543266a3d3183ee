//! The report of `img check`: qemu's `ImageCheck` counters, the
//! per-problem lines the qcow2 checker prints to stderr while it works,
//! the human and JSON renderings of qemu-img 10, and its exit codes.
//!
//! With `-r`, qemu-img checks, repairs, then checks again; the report to
//! render is the second check's, with `leaks_fixed`/`corruptions_fixed`
//! carried over from the repairing pass. [`CheckReport::render_human`] then
//! prints the "following inconsistencies were found and repaired" preamble.

use super::qobject::{to_json_pretty, QDict, QObject};

/// Exit code when the format has no checker (raw): qemu-img prints
/// [`NOT_SUPPORTED_MESSAGE`] and exits 63.
pub const EXIT_NOT_SUPPORTED: i32 = 63;
/// Message for [`EXIT_NOT_SUPPORTED`].
pub const NOT_SUPPORTED_MESSAGE: &str = "This image format does not support checks";

/// The counters of one check (qemu's `ImageCheck`). Zero counters other
/// than `check_errors` are omitted from JSON, as in qemu-img.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Image name as given.
    pub filename: String,
    /// Format name.
    pub format: String,
    /// Internal errors that stopped parts of the check.
    pub check_errors: u64,
    /// Offset just past the last used byte of the image file.
    pub image_end_offset: u64,
    /// Refcounts lower than the real reference count, and other errors.
    pub corruptions: u64,
    /// Clusters with refcounts but no references.
    pub leaks: u64,
    /// Corruptions repaired by `-r all`.
    pub corruptions_fixed: u64,
    /// Leaks repaired by `-r leaks` or `-r all`.
    pub leaks_fixed: u64,
    /// Guest clusters (virtual size / cluster size).
    pub total_clusters: u64,
    /// Allocated guest clusters.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
}

/// A line the checker prints to stderr as it finds (or fixes) a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckMessage {
    /// A refcount differing from the number of references:
    /// `Leaked cluster N refcount=A reference=B` when the refcount is too
    /// high, `ERROR cluster N ...` when too low, `Repairing cluster N ...`
    /// when being fixed.
    RefcountMismatch {
        /// Host cluster index.
        cluster: u64,
        /// Refcount stored in the image.
        refcount: u64,
        /// References actually found.
        reference: u64,
        /// True when this pass repairs it.
        repairing: bool,
    },
    /// Any other line, verbatim (`ERROR OFLAG_COPIED data cluster: ...`,
    /// `Rebuilding refcount structure`, ...).
    Other(String),
}

impl CheckMessage {
    /// The line as qemu prints it, without newline.
    pub fn line(&self) -> String {
        match self {
            Self::RefcountMismatch {
                cluster,
                refcount,
                reference,
                repairing,
            } => {
                let label = if *repairing {
                    "Repairing"
                } else if refcount < reference {
                    "ERROR"
                } else {
                    "Leaked"
                };
                format!("{label} cluster {cluster} refcount={refcount} reference={reference}")
            }
            Self::Other(text) => text.clone(),
        }
    }

    /// `ERROR OFLAG_COPIED data cluster: l2_entry=HEX refcount=N`.
    pub fn oflag_copied_data(l2_entry: u64, refcount: u64) -> Self {
        Self::Other(format!(
            "ERROR OFLAG_COPIED data cluster: l2_entry={l2_entry:x} refcount={refcount}"
        ))
    }
}

/// All messages, one per line, each ending in a newline (for stderr).
pub fn render_messages(messages: &[CheckMessage]) -> String {
    messages.iter().map(|m| m.line() + "\n").collect()
}

impl CheckReport {
    /// True when something was repaired (the preamble is printed).
    pub fn was_repaired(&self) -> bool {
        self.corruptions_fixed != 0 || self.leaks_fixed != 0
    }

    /// What qemu-img prints after a repair, before its double check.
    pub fn render_repaired_preamble(&self) -> String {
        format!(
            "The following inconsistencies were found and repaired:\n\n    \
             {} leaked clusters\n    {} corruptions\n\n\
             Double checking the fixed image now...\n",
            self.leaks_fixed, self.corruptions_fixed
        )
    }

    /// Human output as qemu-img prints it on stdout (nothing at all with
    /// `-q`; the caller handles that).
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        if self.was_repaired() {
            out.push_str(&self.render_repaired_preamble());
        }
        if self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0 {
            out.push_str("No errors were found on the image.\n");
        } else {
            if self.corruptions != 0 {
                out.push_str(&format!(
                    "\n{} errors were found on the image.\n\
                     Data may be corrupted, or further writes to the image may corrupt it.\n",
                    self.corruptions
                ));
            }
            if self.leaks != 0 {
                out.push_str(&format!(
                    "\n{} leaked clusters were found on the image.\n\
                     This means waste of disk space, but no harm to data.\n",
                    self.leaks
                ));
            }
            if self.check_errors != 0 {
                out.push_str(&format!(
                    "\n{} internal errors have occurred during the check.\n",
                    self.check_errors
                ));
            }
        }
        if self.total_clusters != 0 && self.allocated_clusters != 0 {
            let allocated = self.allocated_clusters as f64;
            out.push_str(&format!(
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
                self.allocated_clusters,
                self.total_clusters,
                allocated * 100.0 / self.total_clusters as f64,
                self.fragmented_clusters as f64 * 100.0 / allocated,
                self.compressed_clusters as f64 * 100.0 / allocated
            ));
        }
        if self.image_end_offset != 0 {
            out.push_str(&format!("Image end offset: {}\n", self.image_end_offset));
        }
        out
    }

    /// The QObject qemu-img serializes (members in QAPI order, zero
    /// optional counters left out).
    pub fn to_qobject(&self) -> QObject {
        let nonzero = |n: u64| (n != 0).then_some(n);
        let mut dict = QDict::new();
        dict.put("filename", self.filename.as_str());
        dict.put("format", self.format.as_str());
        dict.put("check-errors", self.check_errors);
        dict.put_opt("image-end-offset", nonzero(self.image_end_offset));
        dict.put_opt("corruptions", nonzero(self.corruptions));
        dict.put_opt("leaks", nonzero(self.leaks));
        dict.put_opt("corruptions-fixed", nonzero(self.corruptions_fixed));
        dict.put_opt("leaks-fixed", nonzero(self.leaks_fixed));
        dict.put_opt("total-clusters", nonzero(self.total_clusters));
        dict.put_opt("allocated-clusters", nonzero(self.allocated_clusters));
        dict.put_opt("fragmented-clusters", nonzero(self.fragmented_clusters));
        dict.put_opt("compressed-clusters", nonzero(self.compressed_clusters));
        QObject::Dict(dict)
    }

    /// `img check --output=json`: pretty JSON and a newline.
    pub fn render_json(&self) -> String {
        format!("{}\n", to_json_pretty(&self.to_qobject()))
    }

    /// qemu-img's exit code for a completed check: 1 if internal errors
    /// occurred ([`CheckReport::failure_message`] is then printed), 2 for
    /// corruptions, 3 for leaks only, 0 for a clean image. After `-r`, pass
    /// the report of the second check (what remains).
    pub fn exit_code(&self) -> i32 {
        if self.check_errors != 0 {
            1
        } else if self.corruptions != 0 {
            2
        } else if self.leaks != 0 {
            3
        } else {
            0
        }
    }

    /// The error line qemu-img adds (after the report) when internal
    /// errors occurred: `Check failed`. A check that could not run at all
    /// prints `Check failed: STRERROR` instead and exits 1.
    pub fn failure_message(&self) -> Option<&'static str> {
        (self.check_errors != 0).then_some("Check failed")
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
