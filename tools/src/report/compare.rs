//! The messages and exit codes of `img compare`, as qemu-img 10 prints
//! them.
//!
//! qemu-img compares the common part first; if the sizes differ it then
//! prints "Warning: Image size mismatch!" and checks that the excess of the
//! larger image reads as zeroes. In strict mode (`-s`) different sizes, or
//! any difference in the block-status words of the two chains, are
//! failures by themselves. All messages go to stdout and are suppressed by
//! `-q`; errors go to stderr.

/// Line printed when the images match.
pub const IDENTICAL: &str = "Images are identical.";
/// Line printed before checking the excess of the larger image.
pub const SIZE_MISMATCH_WARNING: &str = "Warning: Image size mismatch!";
/// Line printed in strict mode when sizes differ.
pub const STRICT_SIZE_MISMATCH: &str = "Strict mode: Image size mismatch!";

/// How a completed comparison ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// Same content (sizes may differ outside strict mode, with the excess
    /// all zeroes).
    Identical,
    /// First differing offset: the first differing (or, where one side
    /// is compared with zeros, non-zero) 512-byte sector, counted from the
    /// start of the chunk qemu-img read.
    ContentMismatch {
        /// Guest offset reported.
        offset: u64,
    },
    /// `-s` and the sizes differ (nothing else is compared).
    StrictSizeMismatch,
    /// `-s` and the block-status words (data, zero, offset, allocated,
    /// end-of-file flags) differ here.
    StrictBlockStatusMismatch {
        /// Guest offset of the extent whose status differs.
        offset: u64,
    },
}

/// The outcome of `img compare` to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareReport {
    /// The virtual sizes differ (outside strict mode this prints the
    /// warning once the common part matched).
    pub size_mismatch: bool,
    /// Where the comparison stopped.
    pub result: CompareResult,
    /// For [`CompareResult::ContentMismatch`]: true when found in the
    /// excess of the larger image (after the warning).
    pub mismatch_in_excess: bool,
}

impl CompareReport {
    /// Everything printed on stdout, in order, with newlines.
    pub fn render(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        let warn = self.size_mismatch
            && match self.result {
                CompareResult::Identical => true,
                CompareResult::ContentMismatch { .. } => self.mismatch_in_excess,
                _ => false,
            };
        if warn {
            lines.push(SIZE_MISMATCH_WARNING.to_owned());
        }
        lines.push(match self.result {
            CompareResult::Identical => IDENTICAL.to_owned(),
            CompareResult::ContentMismatch { offset } => content_mismatch(offset),
            CompareResult::StrictSizeMismatch => STRICT_SIZE_MISMATCH.to_owned(),
            CompareResult::StrictBlockStatusMismatch { offset } => {
                strict_block_status_mismatch(offset)
            }
        });
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// 0 when identical, 1 when different.
    pub fn exit_code(&self) -> i32 {
        match self.result {
            CompareResult::Identical => 0,
            _ => 1,
        }
    }
}

/// `Content mismatch at offset N!`
pub fn content_mismatch(offset: u64) -> String {
    format!("Content mismatch at offset {offset}!")
}

/// `Strict mode: Offset N block status mismatch!`
pub fn strict_block_status_mismatch(offset: u64) -> String {
    format!("Strict mode: Offset {offset} block status mismatch!")
}

/// Failures of `img compare` itself, with qemu-img's exit codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    /// An image could not be opened (the message is the opener's). Exit 2.
    #[error("{0}")]
    Open(String),
    /// Block status query failed. Exit 3.
    #[error("Sector allocation test failed for {filename}")]
    AllocationTest {
        /// Image whose status could not be read.
        filename: String,
    },
    /// Reading data failed. Exit 4.
    #[error("Error while reading offset {offset} of {filename}: {reason}")]
    Read {
        /// Guest offset of the failed read.
        offset: u64,
        /// Image being read.
        filename: String,
        /// `strerror` text.
        reason: String,
    },
}

impl CompareError {
    /// qemu-img's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Open(_) => 2,
            Self::AllocationTest { .. } => 3,
            Self::Read { .. } => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(size_mismatch: bool, result: CompareResult, in_excess: bool) -> CompareReport {
        CompareReport {
            size_mismatch,
            result,
            mismatch_in_excess: in_excess,
        }
    }

    /// Outputs of `qemu-img compare` (qemu-img 10.0.2) on: the same image;
    /// a 1 MiB data image against its overlay with one more cluster;
    /// empty 1 GiB and 2 GiB images (with and without `-s`); an empty
    /// image against one with data at 1500 MiB of 2 GiB; an empty image
    /// against one with an explicitly written zero cluster (`-s`).
    #[test]
    fn messages_match_qemu_img() {
        let cases = [
            (
                report(false, CompareResult::Identical, false),
                "Images are identical.\n",
                0,
            ),
            (
                report(
                    false,
                    CompareResult::ContentMismatch { offset: 1048576 },
                    false,
                ),
                "Content mismatch at offset 1048576!\n",
                1,
            ),
            (
                report(true, CompareResult::Identical, false),
                "Warning: Image size mismatch!\nImages are identical.\n",
                0,
            ),
            (
                report(true, CompareResult::StrictSizeMismatch, false),
                "Strict mode: Image size mismatch!\n",
                1,
            ),
            (
                report(true, CompareResult::ContentMismatch { offset: 0 }, false),
                "Content mismatch at offset 0!\n",
                1,
            ),
            (
                report(
                    true,
                    CompareResult::ContentMismatch { offset: 1572864000 },
                    true,
                ),
                "Warning: Image size mismatch!\nContent mismatch at offset 1572864000!\n",
                1,
            ),
            (
                report(
                    false,
                    CompareResult::StrictBlockStatusMismatch { offset: 65536 },
                    false,
                ),
                "Strict mode: Offset 65536 block status mismatch!\n",
                1,
            ),
        ];
        for (report, text, code) in cases {
            assert_eq!(report.render(), text);
            assert_eq!(report.exit_code(), code);
        }
    }

    #[test]
    fn errors() {
        let open = CompareError::Open(
            "Could not open 'nonexist': Could not open 'nonexist': No such file or directory"
                .to_owned(),
        );
        assert_eq!(open.exit_code(), 2);
        let status = CompareError::AllocationTest {
            filename: "a.qcow2".to_owned(),
        };
        assert_eq!(
            status.to_string(),
            "Sector allocation test failed for a.qcow2"
        );
        assert_eq!(status.exit_code(), 3);
        let read = CompareError::Read {
            offset: 512,
            filename: "b".to_owned(),
            reason: "Input/output error".to_owned(),
        };
        assert_eq!(
            read.to_string(),
            "Error while reading offset 512 of b: Input/output error"
        );
        assert_eq!(read.exit_code(), 4);
    }
}
