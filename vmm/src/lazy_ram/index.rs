//! The index of a RAM stream ([`crate::state::memory`]'s records) built
//! from its record headers alone: which guest pages each RAM record
//! holds and where it is in the stream, and the zero ranges between.
//! The payloads are skipped (read later, when a page is faulted or the
//! loader reaches them); the headers are checked as the eager reader
//! checks them: magic, version, length bound, each run with the eager
//! reader's own check ([`check_run`]: inside the VM's ranges,
//! page-aligned, ascending without overlap), the end record's count, and
//! nothing after it.

use crate::layout::ram_ranges;
use crate::state::machine::{check_end, ConfigSummary};
use crate::state::memory::check_run;
use crate::state::record::{check_header, read_record, RecordKind, HEADER_LEN};
use crate::state::StateError;

/// The most bytes a configuration or end record may have.
const SMALL_RECORD: u32 = 4096;

/// Where a RAM stream's bytes come from (a snapshot's VM-state area).
pub trait StreamSource {
    /// Fills `buf` from stream position `pos`.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError>;
}

/// A range of guest RAM and what fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start (page-aligned).
    pub start: u64,
    /// Bytes (a multiple of the page size).
    pub len: u64,
    /// The stream position of the RAM record holding these pages, or
    /// `None` for zero pages.
    pub record: Option<u64>,
}

/// Reads and checks the record at `pos` whole (a small one: the
/// configuration or the end).
fn small_record(
    source: &dyn StreamSource,
    pos: u64,
    end: u64,
) -> Result<crate::state::record::Record, StateError> {
    let mut head = [0u8; HEADER_LEN];
    if pos + HEADER_LEN as u64 > end {
        return Err(StateError::Truncated { offset: pos });
    }
    source.read_at(pos, &mut head)?;
    let header = check_header(&head, pos)?;
    if header.length > SMALL_RECORD {
        return Err(StateError::Layout(format!(
            "record kind {:#x} at byte {pos} is {} bytes long, more than its kind may be",
            header.code, header.length
        )));
    }
    if pos + HEADER_LEN as u64 + u64::from(header.length) > end {
        return Err(StateError::Truncated { offset: pos });
    }
    let mut bytes = vec![0u8; HEADER_LEN + header.length as usize];
    source.read_at(pos, &mut bytes)?;
    let mut offset = pos;
    read_record(&mut &bytes[..], &mut offset)?.ok_or(StateError::Truncated { offset: pos })
}

/// Builds the index of the RAM stream in `[start, end)` of `source`, for a
/// VM configured as `vm`: segments covering every RAM range exactly, in
/// ascending order. Also returns the bytes of RAM the records hold.
pub fn build(
    source: &dyn StreamSource,
    start: u64,
    end: u64,
    vm: ConfigSummary,
) -> Result<(Vec<Segment>, u64), StateError> {
    let first = small_record(source, start, end)?;
    if first.kind != RecordKind::Config {
        return Err(StateError::Layout(
            "the RAM stream does not start with the configuration".into(),
        ));
    }
    ConfigSummary::from_record(&first)?.check(vm)?;
    let ranges = ram_ranges(vm.memory);
    let mut pos = start + (HEADER_LEN + first.payload.len()) as u64;
    let mut runs: Vec<Segment> = Vec::new();
    let mut bytes = 0u64;
    let mut cursor = 0u64;
    loop {
        if pos + HEADER_LEN as u64 > end {
            return Err(StateError::Truncated { offset: pos });
        }
        let mut head = [0u8; HEADER_LEN + 8];
        let have = (end - pos).min(head.len() as u64) as usize;
        source.read_at(pos, &mut head[..have])?;
        let header = check_header(head[..HEADER_LEN].try_into().expect("20 bytes"), pos)?;
        match RecordKind::from_code(header.code) {
            Some(RecordKind::End) => {
                let record = small_record(source, pos, end)?;
                check_end(&record, runs.len() + 1)?;
                if pos + (HEADER_LEN + record.payload.len()) as u64 != end {
                    return Err(StateError::Layout(
                        "bytes after the RAM's end record".into(),
                    ));
                }
                break;
            }
            Some(RecordKind::Ram) => {
                let record_end = pos + HEADER_LEN as u64 + u64::from(header.length);
                if have < head.len() || header.length < 8 || record_end > end {
                    return Err(StateError::Truncated { offset: pos });
                }
                let run = u64::from_le_bytes(head[HEADER_LEN..].try_into().expect("8 bytes"));
                let length = u64::from(header.length) - 8;
                cursor = check_run(&ranges, run, length, cursor)?;
                bytes += length;
                runs.push(Segment {
                    start: run,
                    len: length,
                    record: Some(pos),
                });
                pos = record_end;
            }
            Some(other) => {
                return Err(StateError::Layout(format!(
                    "record kind {:#x} in the RAM stream",
                    other as u16
                )))
            }
            None => {
                return Err(StateError::UnknownKind {
                    offset: pos,
                    kind: header.code,
                })
            }
        }
    }
    Ok((fill_gaps(&runs, &ranges), bytes))
}

/// The runs (ascending, inside `ranges`) with a zero segment in each
/// gap, covering every range.
fn fill_gaps(runs: &[Segment], ranges: &[(u64, u64)]) -> Vec<Segment> {
    let mut out = Vec::with_capacity(runs.len() * 2 + 2);
    let zeros = |from: u64, to: u64, out: &mut Vec<Segment>| {
        if from < to {
            out.push(Segment {
                start: from,
                len: to - from,
                record: None,
            });
        }
    };
    let mut next = runs.iter().peekable();
    for &(base, size) in ranges {
        let mut at = base;
        while let Some(run) = next.next_if(|r| r.start < base + size) {
            zeros(at, run.start, &mut out);
            out.push(*run);
            at = run.start + run.len;
        }
        zeros(at, base + size, &mut out);
    }
    out
}

/// The segment holding guest-physical `addr`, in `segments` (ascending).
pub fn find(segments: &[Segment], addr: u64) -> Option<usize> {
    let i = segments.partition_point(|s| s.start + s.len <= addr);
    segments
        .get(i)
        .filter(|s| s.start <= addr && addr < s.start + s.len)
        .map(|_| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::machine::end_record;
    use crate::state::memory::PAGE;
    use crate::state::record::write_record;

    impl StreamSource for Vec<u8> {
        fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StateError> {
            let from = pos as usize;
            let slice = self
                .get(from..from + buf.len())
                .ok_or(StateError::Truncated { offset: pos })?;
            buf.copy_from_slice(slice);
            Ok(())
        }
    }

    fn summary(memory: u64) -> ConfigSummary {
        crate::lazy_ram::one_cpu_summary(memory)
    }

    fn stream(memory: u64, runs: &[(u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        let first = summary(memory).to_record();
        write_record(&mut out, first.kind, 0, &first.payload).unwrap();
        for &(start, pages) in runs {
            let mut payload = start.to_le_bytes().to_vec();
            payload.extend(std::iter::repeat_n(0x5a, pages * PAGE));
            write_record(&mut out, RecordKind::Ram, 0, &payload).unwrap();
        }
        let end = end_record(runs.len() + 1);
        write_record(&mut out, end.kind, 0, &end.payload).unwrap();
        out
    }

    #[test]
    fn segments_cover_every_range_and_find_pages() {
        let memory = 16 << 20;
        let bytes = stream(memory, &[(0x1000, 2), (0x40_0000, 1)]);
        let (segments, data) = build(&bytes, 0, bytes.len() as u64, summary(memory)).unwrap();
        assert_eq!(data, 3 * PAGE as u64);
        let mut at = 0;
        for s in &segments {
            assert_eq!(s.start, at);
            at += s.len;
        }
        assert_eq!(at, memory);
        let i = find(&segments, 0x2fff).unwrap();
        assert_eq!(segments[i].start, 0x1000);
        assert!(segments[i].record.is_some());
        assert!(segments[find(&segments, 0).unwrap()].record.is_none());
        assert_eq!(find(&segments, memory), None);
    }

    #[test]
    fn hostile_headers_are_refused_in_one_line() {
        let memory = 16 << 20;
        let good = stream(memory, &[(0x1000, 1), (0x3000, 1)]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (stream(memory, &[(memory, 1)]), "outside the VM's memory"),
            (
                stream(memory, &[(0x3000, 1), (0x1000, 1)]),
                "before the end",
            ),
            (
                stream(memory, &[(0x1000, 2), (0x2000, 1)]),
                "before the end",
            ),
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.clone(), vec![0]].concat(), "bytes after"),
            (stream(32 << 20, &[]), "another configuration"),
            (
                {
                    // A length past the bound in the second record.
                    let mut bad = good.clone();
                    let second = HEADER_LEN + summary(memory).to_record().payload.len();
                    bad[second + 12..second + 16].copy_from_slice(&u32::MAX.to_le_bytes());
                    bad
                },
                "more than the 4 MiB",
            ),
        ];
        for (bytes, want) in cases {
            let err = build(&bytes, 0, bytes.len() as u64, summary(memory)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text} (wanted {want})");
            assert!(!text.contains('\n'), "{text}");
        }
    }
}
