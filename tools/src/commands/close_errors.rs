//! What qemu-img prints when closing an image fails: its qcow2 driver
//! stores persistent bitmaps when the image is inactivated, and a failure
//! there is `Lost persistent bitmaps during inactivation of node 'NODE':
//! REASON` (block/qcow2.c's qcow2_inactivate), after which qemu-img says
//! `Error while closing the image: Invalid argument` (the -EINVAL that
//! qcow2_inactivate returns) and exits 1.

use super::os_text;

/// The name QEMU generates for an anonymous node: `#block`, a counter of
/// the nodes made so far, and two random digits (util/id.c). `ordinal`
/// is the node's place in the order img's command opens them (0 the
/// image's file, 1 its format node).
pub fn node_name(ordinal: u32) -> String {
    format!("#block{ordinal}{:02}", std::process::id() % 100)
}

/// A bitmap store's failure as QEMU words it: the failed write's text
/// and strerror (`Failed to write bitmap 'B' to file: No space left on
/// device`).
pub fn store_failure_text(e: &qcow::Error) -> String {
    match e {
        qcow::Error::Io { context, source } => format!("{context}: {}", os_text(source)),
        other => other.to_string(),
    }
}

/// The line qcow2_inactivate prints when the bitmaps of `node` could not
/// be stored.
pub fn lost_bitmaps_text(node: &str, e: &qcow::Error) -> String {
    format!(
        "Lost persistent bitmaps during inactivation of node '{node}': {}",
        store_failure_text(e)
    )
}

/// Prints [`lost_bitmaps_text`] as qemu-img's error_report does.
pub fn report_lost_bitmaps(node: &str, e: &qcow::Error) {
    eprintln!("{}: {}", crate::program(), lost_bitmaps_text(node, e));
}

/// The text qemu-img gives a failed inactivation (qcow2_inactivate's
/// `-EINVAL`).
pub const CLOSE_FAILURE: &str = "Error while closing the image: Invalid argument";

/// Prints [`CLOSE_FAILURE`] as qemu-img's error_report does.
pub fn report_close_failure() {
    eprintln!("{}: {CLOSE_FAILURE}", crate::program());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bitmap_write_reads_as_qemus() {
        let e = qcow::Error::io(
            "Failed to write bitmap 'good-bitmap' to file",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            lost_bitmaps_text("#block123", &e),
            "Lost persistent bitmaps during inactivation of node '#block123': \
             Failed to write bitmap 'good-bitmap' to file: No space left on device"
        );
        let name = node_name(1);
        assert!(name.starts_with("#block1") && name.len() == "#block1".len() + 2);
    }
}
