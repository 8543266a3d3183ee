//! What convert's workers have learnt of a source's extents, shared
//! between them: one query describes many chunks, as qemu-img keeps the
//! last block status it got (`sector_next_status`) instead of asking for
//! each chunk.
//!
//! Asking for each chunk cost a raw source two lseeks per chunk, and on
//! tmpfs SEEK_HOLE walks every page up to the next hole: over a 512 MiB
//! file with no holes that was 5.8 s of system time, growing with the
//! square of the size.

use std::sync::Mutex;

use anyhow::Result;
use qcow::device::{chain_extents, BlockRead, ExtentKind};

/// One extent of a source: guest offset, length, kind, and the layer of
/// the chain that decides it (0 is the top).
pub type SourceExtent = (u64, u64, ExtentKind, u32);

/// The first span asked for; it grows while answers come back in few
/// extents and shrinks while they come back in many.
const FIRST_SPAN: u64 = 64 << 20;
/// The largest span asked for at once.
const MAX_SPAN: u64 = 1 << 40;
/// Answers of at most this many extents let the span grow (x4).
const FEW_EXTENTS: usize = 16;
/// Answers of more than this many extents halve the span, which bounds
/// the window's memory by the source's fragmentation.
const MANY_EXTENTS: usize = 4096;

struct Window {
    source: usize,
    start: u64,
    end: u64,
    span: u64,
    extents: Vec<SourceExtent>,
}

/// The shared window of known extents of one job.
pub struct ExtentWindow {
    /// Describe the top layer alone (a target with a backing file).
    top_only: bool,
    /// The smallest span asked for (a chunk).
    min_span: u64,
    window: Mutex<Window>,
}

impl ExtentWindow {
    /// An empty window; `top_only` describes only each source's top layer.
    pub fn new(top_only: bool, min_span: u64) -> Self {
        ExtentWindow {
            top_only,
            min_span,
            window: Mutex::new(Window {
                source: usize::MAX,
                start: 0,
                end: 0,
                span: FIRST_SPAN.max(min_span),
                extents: Vec::new(),
            }),
        }
    }

    fn query(&self, source: &dyn BlockRead, pos: u64, len: u64) -> Result<Vec<SourceExtent>> {
        Ok(if self.top_only {
            source
                .extents(pos, len)?
                .into_iter()
                .map(|e| (e.guest_offset, e.len, e.kind, 0))
                .collect()
        } else {
            chain_extents(source, pos, len)?
                .into_iter()
                .map(|e| (e.guest_offset, e.len, e.kind, e.depth))
                .collect()
        })
    }

    /// Extents of `[pos, end)` of source number `index` (at least the
    /// first; callers loop from the end of what they get), clipped to
    /// that range.
    pub fn extents(
        &self,
        index: usize,
        source: &dyn BlockRead,
        pos: u64,
        end: u64,
    ) -> Result<Vec<SourceExtent>> {
        let mut w = self.window.lock().expect("extent window lock poisoned");
        let inside = w.source == index && w.start <= pos && pos < w.end;
        if !inside {
            if w.source == index && pos < w.start {
                // A worker behind the others: answer it alone rather than
                // move the window back.
                drop(w);
                return self.query(source, pos, end - pos);
            }
            let size = source.virtual_size();
            let span = w.span.max(end - pos).min(size.saturating_sub(pos));
            let extents = self.query(source, pos, span)?;
            let mut covered = pos;
            for e in &extents {
                if e.0 != covered {
                    break;
                }
                covered = e.0 + e.1;
            }
            if covered == pos {
                return Ok(extents);
            }
            let next_span = if extents.len() <= FEW_EXTENTS {
                w.span.saturating_mul(4).min(MAX_SPAN)
            } else if extents.len() > MANY_EXTENTS {
                (w.span / 2).max(self.min_span)
            } else {
                w.span
            };
            *w = Window {
                source: index,
                start: pos,
                end: covered,
                span: next_span,
                extents,
            };
        }
        let first = w.extents.partition_point(|e| e.0 + e.1 <= pos);
        let mut out = Vec::new();
        for &(offset, len, kind, depth) in &w.extents[first..] {
            if offset >= end {
                break;
            }
            let start = offset.max(pos);
            let stop = (offset + len).min(end);
            out.push((start, stop - start, shifted(kind, start - offset), depth));
        }
        Ok(out)
    }
}

/// `kind` of an extent whose first `skip` bytes are cut off.
fn shifted(kind: ExtentKind, skip: u64) -> ExtentKind {
    match kind {
        ExtentKind::Data { host_offset, file } => ExtentKind::Data {
            host_offset: host_offset + skip,
            file,
        },
        ExtentKind::Zero { host_offset } => ExtentKind::Zero {
            host_offset: host_offset.map(|h| h + skip),
        },
        ExtentKind::Unallocated { host_offset } => ExtentKind::Unallocated {
            host_offset: host_offset.map(|h| h + skip),
        },
        // A compressed cluster is read whole; its offset names the
        // cluster, not a byte of it.
        compressed @ ExtentKind::Compressed { .. } => compressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::device::{Extent, FileIndex, RawImage};
    use qcow::storage::MemStorage;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A raw source that counts the extent queries it answers.
    struct Counting {
        raw: RawImage,
        queries: AtomicUsize,
    }

    impl BlockRead for Counting {
        fn virtual_size(&self) -> u64 {
            self.raw.virtual_size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> qcow::Result<()> {
            self.raw.read_at(buf, offset)
        }
        fn extents(&self, offset: u64, len: u64) -> qcow::Result<Vec<Extent>> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            self.raw.extents(offset, len)
        }
        fn backing(&self) -> Option<&dyn BlockRead> {
            None
        }
        fn format_name(&self) -> &'static str {
            "raw"
        }
    }

    fn source(bytes: usize) -> Counting {
        let storage: Arc<dyn qcow::storage::Storage> =
            Arc::new(MemStorage::from_bytes(vec![1u8; bytes]));
        Counting {
            raw: RawImage::new(storage).expect("raw image"),
            queries: AtomicUsize::new(0),
        }
    }

    #[test]
    fn one_query_serves_many_chunks() {
        let src = source(4 << 20);
        let window = ExtentWindow::new(false, 4096);
        for chunk in 0..16u64 {
            let pos = chunk << 18;
            let got = window
                .extents(0, &src, pos, pos + (1 << 18))
                .expect("extents");
            assert_eq!(got.len(), 1);
            assert_eq!((got[0].0, got[0].1), (pos, 1 << 18));
            assert_eq!(
                got[0].2,
                ExtentKind::Data {
                    host_offset: pos,
                    file: FileIndex::IMAGE
                }
            );
        }
        assert_eq!(src.queries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_range_behind_the_window_is_answered_alone() {
        let src = source(1 << 20);
        let window = ExtentWindow::new(false, 4096);
        window.extents(0, &src, 65536, 1 << 20).expect("extents");
        let got = window.extents(0, &src, 8192, 12288).expect("extents");
        assert_eq!((got[0].0, got[0].1), (8192, 4096));
        assert_eq!(src.queries.load(Ordering::Relaxed), 2);
        // The window stayed where it was.
        window.extents(0, &src, 131072, 262144).expect("extents");
        assert_eq!(src.queries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn another_source_moves_the_window() {
        let a = source(1 << 20);
        let b = source(1 << 20);
        let window = ExtentWindow::new(false, 4096);
        window.extents(0, &a, 0, 4096).expect("extents");
        window.extents(1, &b, 0, 4096).expect("extents");
        window.extents(1, &b, 4096, 8192).expect("extents");
        assert_eq!(a.queries.load(Ordering::Relaxed), 1);
        assert_eq!(b.queries.load(Ordering::Relaxed), 1);
    }
}
