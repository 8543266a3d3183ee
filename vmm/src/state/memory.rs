//! Guest RAM as records: runs of non-zero pages, each record its
//! guest-physical start then its bytes (zero pages are skipped, so a
//! restore needs RAM that starts zeroed, as a fresh mapping is). The
//! stream starts with the configuration record and ends with the end
//! record; the reader refuses RAM outside the VM's RAM ranges.

use std::io::{Read, Write};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::machine::{check_end, end_record, ConfigSummary};
use super::record::{
    read_record, read_record_into, write_record, write_record_parts, Payload, RecordKind,
    MAX_PAYLOAD,
};
use super::StateError;
use crate::layout::ram_ranges;

/// The page size runs are made of.
pub const PAGE: usize = 4096;
/// Bytes of RAM in one record at most when saving. A lazy revert's
/// first touch of a page reads and checks its whole record before the
/// guest goes on, so records are kept at 1 MiB (not the 4 MiB a record
/// may hold: readers still take any run up to [`MAX_PAYLOAD`], so older
/// images read as before).
const RUN_MAX: usize = 1 << 20;
const _: () = assert!(RUN_MAX + PAGE <= MAX_PAYLOAD as usize);

/// Checks a RAM run read from a stream (untrusted): `length` bytes at
/// guest-physical `start`, the previous run ending at `cursor` (0 for
/// the first). It must lie inside one of the VM's RAM `ranges`
/// (`layout::ram_ranges`), be page-aligned and not empty, and start at or
/// after `cursor` (runs ascend without overlap, so the gaps between them
/// are known to be zero). Returns the run's end, the next `cursor`. The
/// eager reader ([`restore`]) and the lazy index (`lazy_ram::index`) both
/// check each run with it.
pub fn check_run(
    ranges: &[(u64, u64)],
    start: u64,
    length: u64,
    cursor: u64,
) -> Result<u64, StateError> {
    let inside = ranges.iter().any(|&(base, size)| {
        start >= base && start.checked_add(length).is_some_and(|e| e <= base + size)
    });
    if !inside
        || length == 0
        || !start.is_multiple_of(PAGE as u64)
        || !length.is_multiple_of(PAGE as u64)
    {
        return Err(StateError::OutsideMemory { start, length });
    }
    if start < cursor {
        return Err(StateError::Layout(format!(
            "RAM run at {start:#x} before the end of the previous one ({cursor:#x})"
        )));
    }
    Ok(start + length)
}

/// Writes `mem`'s non-zero pages as records after `config`'s; returns
/// the bytes of RAM written. Pages the host never backed (mincore) are
/// zero and not read; the others are read in chunks of 1 MiB
/// (`RUN_MAX`, one copy), compared page by page with a zero page, and each run of
/// non-zero pages is written from the chunk as one record. A RAM region's
/// length is a multiple of the page size (`layout::ram_ranges`).
pub fn save<W: Write>(
    mem: &GuestMemoryMmap,
    config: ConfigSummary,
    out: &mut W,
) -> Result<u64, StateError> {
    save_marking(mem, config, out, |_| {})
}

/// [`save`], calling `at_record(out)` before each record is written: the
/// image's VM-state area marks where each record's header goes, the part
/// of the stream a lazy revert's index reads first.
pub fn save_marking<W: Write>(
    mem: &GuestMemoryMmap,
    config: ConfigSummary,
    out: &mut W,
    mut at_record: impl FnMut(&mut W),
) -> Result<u64, StateError> {
    static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
    let first = config.to_record();
    at_record(out);
    write_record(out, first.kind, 0, &first.payload)?;
    let mut count = 1;
    let mut saved = 0u64;
    let mut chunk = vec![0u8; RUN_MAX];
    for region in mem.iter() {
        let start = region.start_addr().0;
        let resident = super::resident::resident_pages(region);
        let mut offset = 0u64;
        while offset < region.len() {
            let len = (region.len() - offset).min(RUN_MAX as u64) as usize;
            let addr = start + offset;
            // Pages the host never backed read as zero: only the others are
            // read (reading one would fault it in).
            let first_page = (offset / super::resident::HOST_PAGE) as usize;
            let backed = |page: usize| {
                resident
                    .as_ref()
                    .is_none_or(|flags| flags.get(first_page + page).copied().unwrap_or(true))
            };
            let pages = len / PAGE;
            let buf = &mut chunk[..len];
            let mut page = 0;
            while page < pages {
                if !backed(page) {
                    page += 1;
                    continue;
                }
                let from = page;
                while page < pages && backed(page) {
                    page += 1;
                }
                let at = addr + (from * PAGE) as u64;
                mem.read_slice(&mut buf[from * PAGE..page * PAGE], GuestAddress(at))
                    .map_err(|e| StateError::Read(format!("guest RAM at {at:#x}: {e}")))?;
            }
            let mut run_start = None;
            for page in 0..=pages {
                let at = page * PAGE;
                let zero = page == pages || !backed(page) || buf[at..at + PAGE] == ZERO_PAGE;
                match (run_start, zero) {
                    (None, false) => run_start = Some(at),
                    (Some(from), true) => {
                        let run_addr = (addr + from as u64).to_le_bytes();
                        at_record(out);
                        write_record_parts(out, RecordKind::Ram, 0, &[&run_addr, &buf[from..at]])?;
                        saved += (at - from) as u64;
                        count += 1;
                        run_start = None;
                    }
                    _ => {}
                }
            }
            offset += len as u64;
        }
    }
    let end = end_record(count);
    at_record(out);
    write_record(out, end.kind, 0, &end.payload)?;
    Ok(saved)
}

/// Reads a RAM stream for a VM configured as `vm` into `mem` (zeroed).
/// Returns the bytes of RAM written.
pub fn restore<R: Read>(
    input: &mut R,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    restore_into(input, vm, mem, false)
}

/// Reads a RAM stream for a VM configured as `vm` into `mem`, which holds
/// other data (the RAM of the VM a revert replaces): each page the stream
/// writes is overwritten in place, without the page fault a fresh mapping
/// costs per page, and every page between the stream's runs is given
/// back to the kernel (reads as zero again). Returns the bytes of RAM
/// written.
pub fn restore_over<R: Read>(
    input: &mut R,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    restore_into(input, vm, mem, true)
}

/// Zeroes `[from, to)` of guest RAM, inside one region.
fn zero_gap(mem: &GuestMemoryMmap, from: u64, to: u64) -> Result<(), StateError> {
    if to > from {
        super::resident::discard(mem, GuestAddress(from), to - from)
            .map_err(|e| StateError::Write(format!("zeroing guest RAM at {from:#x}: {e}")))?;
    }
    Ok(())
}

/// [`restore`] and [`restore_over`]: runs must come in ascending order
/// (as [`save`] writes them), so the gaps between them are known.
fn restore_into<R: Read>(
    input: &mut R,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
    zero_gaps: bool,
) -> Result<u64, StateError> {
    let mut offset = 0;
    let first = read_record(input, &mut offset)?.ok_or(StateError::Truncated { offset: 0 })?;
    if first.kind != RecordKind::Config {
        return Err(StateError::Layout(
            "the RAM stream does not start with the configuration".into(),
        ));
    }
    ConfigSummary::from_record(&first)?.check(vm)?;
    let ranges = ram_ranges(vm.memory);
    let mut count = 1;
    let mut restored = 0u64;
    // The end of the last run: the next one must start at or after it.
    let mut cursor = 0u64;
    // Each record's payload buffer is reused for the next.
    let mut spare = Vec::new();
    loop {
        let record = read_record_into(input, &mut offset, std::mem::take(&mut spare))?
            .ok_or(StateError::Truncated { offset })?;
        match record.kind {
            RecordKind::End => {
                check_end(&record, count)?;
                if zero_gaps {
                    for &(base, size) in &ranges {
                        zero_gap(mem, cursor.max(base), base + size)?;
                    }
                }
                break;
            }
            RecordKind::Ram => {
                let mut p = Payload::new(&record);
                let start = p.u64()?;
                let bytes = p.rest();
                let length = bytes.len() as u64;
                let run_end = check_run(&ranges, start, length, cursor)?;
                if zero_gaps {
                    // The gap inside the ranges, up to this run.
                    for &(base, size) in &ranges {
                        zero_gap(mem, cursor.max(base), start.min(base + size))?;
                    }
                }
                cursor = run_end;
                mem.write_slice(bytes, GuestAddress(start))
                    .map_err(|e| StateError::Write(format!("guest RAM at {start:#x}: {e}")))?;
                restored += length;
                count += 1;
                spare = record.payload;
            }
            other => {
                return Err(StateError::Layout(format!(
                    "record kind {:#x} in the RAM stream",
                    other as u16
                )))
            }
        }
    }
    let mut rest = [0u8; 1];
    if input
        .read(&mut rest)
        .map_err(|e| StateError::Read(e.to_string()))?
        != 0
    {
        return Err(StateError::Layout(
            "bytes after the RAM's end record".into(),
        ));
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn summary(memory: u64) -> ConfigSummary {
        ConfigSummary {
            cpus: 1,
            memory,
            disks: 0,
            nets: 0,
        }
    }

    #[test]
    fn round_trip_skips_zero_pages() {
        let size = 16 << 20;
        let mem = memory(size);
        mem.write_slice(b"first page", GuestAddress(0)).unwrap();
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"last", GuestAddress(size - 4)).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            save(&mem, summary(size), &mut out).unwrap(),
            5 * PAGE as u64
        );
        assert!(out.len() < 6 * PAGE);
        let copy = memory(size);
        restore(&mut &out[..], summary(size), &copy).unwrap();
        let (mut a, mut b) = (vec![0u8; size as usize], vec![0u8; size as usize]);
        mem.read_slice(&mut a, GuestAddress(0)).unwrap();
        copy.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
    }

    #[test]
    fn restore_over_other_data_leaves_the_snapshot_exactly() {
        let size = 16 << 20;
        let saved = memory(size);
        saved
            .write_slice(&[1u8; PAGE], GuestAddress(0x2000))
            .unwrap();
        saved
            .write_slice(&[2u8; 2 * PAGE], GuestAddress(0x40_0000))
            .unwrap();
        let mut out = Vec::new();
        save(&saved, summary(size), &mut out).unwrap();
        // The RAM a revert replaces: other data everywhere, also in the
        // gaps between the snapshot's runs and after the last one.
        let live = memory(size);
        for addr in [0, 0x2000, 0x3000, 0x40_1000, 0x80_0000, size - PAGE as u64] {
            live.write_slice(&[9u8; PAGE], GuestAddress(addr)).unwrap();
        }
        assert_eq!(
            restore_over(&mut &out[..], summary(size), &live).unwrap(),
            3 * PAGE as u64
        );
        let (mut a, mut b) = (vec![0u8; size as usize], vec![0u8; size as usize]);
        saved.read_slice(&mut a, GuestAddress(0)).unwrap();
        live.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
    }

    #[test]
    fn records_hold_one_mib_and_older_four_mib_runs_still_read() {
        let size = 16 << 20;
        let mem = memory(size);
        mem.write_slice(&vec![3u8; 3 << 20], GuestAddress(0))
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(save(&mem, summary(size), &mut out).unwrap(), 3 << 20);
        // The configuration, three RAM records of 1 MiB, the end.
        let (mut reader, mut offset) = (&out[..], 0u64);
        let mut ram_records = 0;
        while let Some(record) = read_record(&mut reader, &mut offset).unwrap() {
            if record.kind == RecordKind::Ram {
                assert_eq!(record.payload.len(), 8 + RUN_MAX);
                ram_records += 1;
            }
        }
        assert_eq!(ram_records, 3);

        // An image saved before records were 1 MiB: one run of 4 MiB
        // less a page.
        let old_run = MAX_PAYLOAD as usize - PAGE;
        let mut old = Vec::new();
        let first = summary(size).to_record();
        write_record(&mut old, first.kind, 0, &first.payload).unwrap();
        let mut payload = 0x1000u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&vec![9u8; old_run]);
        write_record(&mut old, RecordKind::Ram, 0, &payload).unwrap();
        let end = end_record(2);
        write_record(&mut old, end.kind, 0, &end.payload).unwrap();
        let target = memory(size);
        restore(&mut &old[..], summary(size), &target).unwrap();
        let mut back = vec![0u8; old_run];
        target.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert!(back.iter().all(|&b| b == 9));
    }

    #[test]
    fn runs_out_of_order_are_refused() {
        let size = 16 << 20;
        let mut out = Vec::new();
        let first = summary(size).to_record();
        write_record(&mut out, first.kind, 0, &first.payload).unwrap();
        for start in [0x2000u64, 0x1000] {
            let mut payload = start.to_le_bytes().to_vec();
            payload.extend_from_slice(&[5u8; PAGE]);
            write_record(&mut out, RecordKind::Ram, 0, &payload).unwrap();
        }
        let end = end_record(3);
        write_record(&mut out, end.kind, 0, &end.payload).unwrap();
        for over in [false, true] {
            let mem = memory(size);
            let err = restore_into(&mut &out[..], summary(size), &mem, over).unwrap_err();
            assert!(
                err.to_string().contains("before the end of the previous"),
                "{err}"
            );
        }
    }

    #[test]
    fn runs_are_checked_against_the_ranges_alignment_and_order() {
        let ranges = ram_ranges(16 << 20);
        let page = PAGE as u64;
        assert_eq!(check_run(&ranges, 0, page, 0).unwrap(), page);
        assert_eq!(
            check_run(&ranges, 0x10_0000, 4 * page, 0x2000).unwrap(),
            0x10_0000 + 4 * page
        );
        // The last page of RAM, and one past it.
        assert!(check_run(&ranges, (16 << 20) - page, page, 0).is_ok());
        for (start, length) in [
            (16 << 20, page),
            ((16 << 20) - page, 2 * page),
            (0x1000, 0),
            (0x1001, page),
            (0x1000, 100),
            (u64::MAX - page + 1, page),
        ] {
            let err = check_run(&ranges, start, length, 0).unwrap_err();
            assert!(
                matches!(err, StateError::OutsideMemory { .. }),
                "{start:#x}+{length:#x}: {err}"
            );
        }
        let err = check_run(&ranges, 0x1000, page, 0x2000).unwrap_err();
        assert!(
            err.to_string().contains("before the end of the previous"),
            "{err}"
        );
        // Overlapping the previous run by one page is refused too.
        assert!(check_run(&ranges, 0x1000, 2 * page, 0x2000).is_err());
    }

    #[test]
    fn refuses_other_sizes_and_ranges_outside() {
        let mem = memory(16 << 20);
        mem.write_slice(b"x", GuestAddress(0)).unwrap();
        let mut out = Vec::new();
        save(&mem, summary(16 << 20), &mut out).unwrap();
        let err = restore(&mut &out[..], summary(32 << 20), &memory(32 << 20)).unwrap_err();
        assert!(matches!(err, StateError::Config(_)), "{err}");

        // A well-formed record naming RAM past the end.
        let mut bad = Vec::new();
        let first = summary(16 << 20).to_record();
        write_record(&mut bad, first.kind, 0, &first.payload).unwrap();
        let mut run = (16u64 << 20).to_le_bytes().to_vec();
        run.extend_from_slice(&[1u8; PAGE]);
        write_record(&mut bad, RecordKind::Ram, 0, &run).unwrap();
        let end = end_record(2);
        write_record(&mut bad, end.kind, 0, &end.payload).unwrap();
        let err = restore(&mut &bad[..], summary(16 << 20), &mem).unwrap_err();
        assert!(matches!(err, StateError::OutsideMemory { .. }), "{err}");

        // Cut before the end record.
        let err = restore(&mut &out[..out.len() - 28], summary(16 << 20), &mem).unwrap_err();
        assert!(matches!(err, StateError::Truncated { .. }), "{err}");
    }
}
