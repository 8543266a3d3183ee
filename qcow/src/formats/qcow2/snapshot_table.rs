//! The internal snapshot table: parsing and writing.
//!
//! Each entry is a 40-byte fixed header (L1 table offset and size, the
//! lengths of the ID and name, dates, the 32-bit VM state size and the
//! length of the extra data), then `extra_data_size` bytes of extra data
//! (the 64-bit VM state size, the virtual disk size and the instruction
//! count, then any bytes this crate does not know, kept verbatim), then the
//! ID and the name; entries start at multiples of 8 bytes.
//!
//! [`SnapshotTable::parse`] is the reader for opening an image, as QEMU's
//! qcow2_read_snapshots reads at open: bytes past the end of the file read
//! as zero (QEMU opens such an image; creating a snapshot in it then fails),
//! every length is bounded before anything is allocated. A snapshot's own
//! L1 table is checked only when the snapshot is used
//! ([`Snapshot::validate_l1`]), as QEMU checks it. [`SnapshotTable::read_for_check`]
//! is the reader the checker uses; with `repair` it drops what QEMU's
//! `qemu-img check -r all` drops instead of failing.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::header::{MAX_L1_BYTES, MAX_SNAPSHOTS, MAX_SNAPSHOT_TABLE_BYTES};
use crate::storage::Storage;

/// Length of the fixed part of an entry.
pub const ENTRY_HEADER_LEN: u64 = 40;
/// Most extra data per entry QEMU accepts.
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Extra data this crate knows and writes: vm_state_size_large, disk_size
/// and icount.
pub const KNOWN_EXTRA_DATA: u32 = 24;
/// Extra data every version 3 entry must have (vm_state_size_large and
/// disk_size).
pub const V3_MIN_EXTRA_DATA: u32 = 16;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Unique ID (usually a decimal number). Bytes that are not UTF-8 are
    /// replaced.
    pub id: String,
    /// Name given by the user.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state (the 64-bit field if present, else the
    /// 32-bit one).
    pub vm_state_size: u64,
    /// Extra data length as stored (after truncation by a repairing read).
    /// [`SnapshotTable::write`] ignores it and writes
    /// `KNOWN_EXTRA_DATA + unknown_extra_data.len()`.
    pub extra_data_size: u32,
    /// Virtual disk size when the snapshot was taken, if recorded. QEMU
    /// assumes the current virtual size when it is not.
    pub disk_size: Option<u64>,
    /// Instruction count for record/replay, if recorded (-1 on disk means
    /// none).
    pub icount: Option<u64>,
    /// Extra data beyond the fields this crate knows, preserved verbatim.
    pub unknown_extra_data: Vec<u8>,
}

impl Snapshot {
    /// QEMU's checks of a snapshot's L1 table when the snapshot is used
    /// (qcow2_validate_table for "Snapshot L1 table"): at most 32 MiB, then
    /// a cluster-aligned offset whose table end fits in 63 bits. The table
    /// is not checked against the file's length, as QEMU does not.
    pub fn validate_l1(&self, cluster_size: u64) -> Result<()> {
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::SnapshotL1Refused {
                id: self.id.clone(),
                field: "l1_size",
                value: self.l1_size.into(),
                message: "Snapshot L1 table too large",
            });
        }
        if (i64::MAX as u64) - l1_bytes < self.l1_table_offset
            || !self.l1_table_offset.is_multiple_of(cluster_size)
        {
            return Err(Error::SnapshotL1Refused {
                id: self.id.clone(),
                field: "l1_table_offset",
                value: self.l1_table_offset,
                message: "Snapshot L1 table offset invalid",
            });
        }
        Ok(())
    }

    /// Length of this entry as [`SnapshotTable::write`] lays it out, without
    /// the padding that aligns the next entry.
    pub fn written_len(&self) -> u64 {
        ENTRY_HEADER_LEN
            + u64::from(KNOWN_EXTRA_DATA)
            + self.unknown_extra_data.len() as u64
            + self.id.len() as u64
            + self.name.len() as u64
    }
}

/// What a repairing read dropped (see [`SnapshotTable::read_for_check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRead {
    /// The snapshots kept.
    pub snapshots: Vec<Snapshot>,
    /// Bytes from the table's offset to the end of the last kept entry.
    pub table_size: u64,
    /// Snapshots dropped off the end because the table was too big.
    pub dropped: u32,
    /// Entries whose extra data was cut to [`MAX_EXTRA_DATA`]: (index,
    /// extra_data_size as stored).
    pub truncated: Vec<(u32, u32)>,
}

/// The snapshot table as a whole.
pub struct SnapshotTable;

/// Reads through a window so that thousands of small entries do not cost
/// thousands of storage reads.
struct Cursor<'a> {
    storage: &'a dyn Storage,
    window: Vec<u8>,
    window_start: u64,
}

const WINDOW: usize = 64 << 10;

impl<'a> Cursor<'a> {
    fn new(storage: &'a dyn Storage) -> Self {
        Cursor {
            storage,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// Fills `buf` from `offset`; bytes past the end of the storage read as
    /// zero.
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(Error::InvalidField {
                field: "snapshots_offset",
                value: offset,
                reason: "snapshot table entry offset overflows",
            })?;
        let in_window =
            offset >= self.window_start && end <= self.window_start + self.window.len() as u64;
        if !in_window {
            if buf.len() > WINDOW {
                return self.storage.read_at(buf, offset);
            }
            self.window.resize(WINDOW, 0);
            self.storage.read_at(&mut self.window, offset)?;
            self.window_start = offset;
        }
        let start = (offset - self.window_start) as usize;
        buf.copy_from_slice(&self.window[start..start + buf.len()]);
        Ok(())
    }
}

fn bad(index: u32, field: &'static str, value: u64, reason: &'static str) -> Error {
    Error::InvalidSnapshot {
        index: index.into(),
        field,
        value,
        reason,
    }
}

/// The fixed header of one entry, decoded.
struct EntryHeader {
    l1_table_offset: u64,
    l1_size: u32,
    id_len: u16,
    name_len: u16,
    date_sec: u32,
    date_nsec: u32,
    vm_clock_nsec: u64,
    vm_state_size: u32,
    extra_data_size: u32,
}

impl EntryHeader {
    fn decode(h: &[u8; ENTRY_HEADER_LEN as usize]) -> Self {
        EntryHeader {
            l1_table_offset: BigEndian::read_u64(&h[0..8]),
            l1_size: BigEndian::read_u32(&h[8..12]),
            id_len: BigEndian::read_u16(&h[12..14]),
            name_len: BigEndian::read_u16(&h[14..16]),
            date_sec: BigEndian::read_u32(&h[16..20]),
            date_nsec: BigEndian::read_u32(&h[20..24]),
            vm_clock_nsec: BigEndian::read_u64(&h[24..32]),
            vm_state_size: BigEndian::read_u32(&h[32..36]),
            extra_data_size: BigEndian::read_u32(&h[36..40]),
        }
    }
}

/// Reads `nb_snapshots` entries at `table_offset`; bytes past the end of
/// the file read as zero. With `repair`, oversized parts are dropped
/// instead of refused.
fn read_entries(
    storage: &dyn Storage,
    table_offset: u64,
    nb_snapshots: u32,
    repair: bool,
) -> Result<CheckRead> {
    let mut cursor = Cursor::new(storage);
    let mut out = CheckRead::default();
    let mut offset = table_offset;
    // Bytes the kept entries take, counting cut extra data at its cut
    // length (QEMU's table_length).
    let mut table_length: u64 = 0;
    for index in 0..nb_snapshots {
        let entry_start = offset;
        table_length = table_length.next_multiple_of(8);
        offset = offset.checked_next_multiple_of(8).ok_or_else(|| {
            bad(
                index,
                "offset",
                offset,
                "snapshot table entry offset overflows",
            )
        })?;
        let entry_offset = offset;
        let overflow = move || {
            bad(
                index,
                "offset",
                entry_offset,
                "snapshot table entry offset overflows",
            )
        };
        let header_end = offset.checked_add(ENTRY_HEADER_LEN).ok_or_else(overflow)?;
        let mut raw = [0u8; ENTRY_HEADER_LEN as usize];
        cursor.read(&mut raw, offset)?;
        offset = header_end;
        let h = EntryHeader::decode(&raw);

        let mut extra_data_size = h.extra_data_size;
        if extra_data_size > MAX_EXTRA_DATA {
            if !repair {
                return Err(Error::SnapshotExtraDataTooLarge {
                    index: index.into(),
                    size: extra_data_size.into(),
                });
            }
            out.truncated.push((index, extra_data_size));
        }
        let extra_end = offset
            .checked_add(extra_data_size.into())
            .ok_or_else(overflow)?;
        let known_len = extra_data_size.min(KNOWN_EXTRA_DATA) as usize;
        let mut known = [0u8; KNOWN_EXTRA_DATA as usize];
        cursor.read(&mut known[..known_len], offset)?;
        let vm_state_size = if extra_data_size >= 8 {
            BigEndian::read_u64(&known[0..8])
        } else {
            h.vm_state_size.into()
        };
        let disk_size = (extra_data_size >= 16).then(|| BigEndian::read_u64(&known[8..16]));
        let icount = (extra_data_size >= 24)
            .then(|| BigEndian::read_u64(&known[16..24]))
            .filter(|&c| c != u64::MAX);
        let mut unknown_extra_data = Vec::new();
        if extra_data_size > KNOWN_EXTRA_DATA {
            if extra_data_size > MAX_EXTRA_DATA {
                extra_data_size = MAX_EXTRA_DATA;
            }
            unknown_extra_data = vec![0u8; (extra_data_size - KNOWN_EXTRA_DATA) as usize];
            cursor.read(
                &mut unknown_extra_data,
                offset + u64::from(KNOWN_EXTRA_DATA),
            )?;
        }
        offset = extra_end;

        let id_end = offset.checked_add(h.id_len.into()).ok_or_else(overflow)?;
        let mut id = vec![0u8; h.id_len.into()];
        cursor.read(&mut id, offset)?;
        offset = id_end;
        let name_end = offset.checked_add(h.name_len.into()).ok_or_else(overflow)?;
        let mut name = vec![0u8; h.name_len.into()];
        cursor.read(&mut name, offset)?;
        offset = name_end;

        table_length += ENTRY_HEADER_LEN
            + u64::from(extra_data_size)
            + u64::from(h.id_len)
            + u64::from(h.name_len);
        if table_length > MAX_SNAPSHOT_TABLE_BYTES || offset - table_offset > i32::MAX as u64 {
            if !repair {
                return Err(Error::SnapshotTableTooBig {
                    index: index.into(),
                    bytes: table_length,
                    overhanging: u64::from(nb_snapshots - index),
                });
            }
            // A cut entry that is then dropped still counts as cut, as in
            // QEMU.
            out.dropped = nb_snapshots - index;
            offset = entry_start;
            break;
        }
        out.snapshots.push(Snapshot {
            l1_table_offset: h.l1_table_offset,
            l1_size: h.l1_size,
            id: c_string(&id),
            name: c_string(&name),
            date_sec: h.date_sec,
            date_nsec: h.date_nsec,
            vm_clock_nsec: h.vm_clock_nsec,
            vm_state_size,
            extra_data_size,
            disk_size,
            icount,
            unknown_extra_data,
        });
    }
    out.table_size = offset - table_offset;
    Ok(out)
}

/// QEMU keeps IDs and names as C strings: they end at the first NUL.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl SnapshotTable {
    /// Reads `nb_snapshots` entries at `offset` as QEMU reads them when it
    /// opens an image: bytes past the end of the file read as zero.
    ///
    /// Refuses (naming the entry, field and value) more than 65536
    /// snapshots, a misaligned table, more than 1024 bytes of extra data
    /// and a table over 64 MiB, so memory stays bounded. Snapshot L1
    /// tables are checked when used ([`Snapshot::validate_l1`]).
    pub fn parse(
        storage: &dyn Storage,
        offset: u64,
        nb_snapshots: u32,
        cluster_size: u64,
    ) -> Result<Vec<Snapshot>> {
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::InvalidTable {
                table: "snapshot table",
                offset,
                entries: nb_snapshots.into(),
                reason: "more than 65536 snapshots",
            });
        }
        if nb_snapshots == 0 {
            return Ok(Vec::new());
        }
        if offset == 0 || !offset.is_multiple_of(cluster_size) {
            return Err(Error::InvalidTable {
                table: "snapshot table",
                offset,
                entries: nb_snapshots.into(),
                reason: "offset is not a nonzero multiple of the cluster size",
            });
        }
        Ok(read_entries(storage, offset, nb_snapshots, false)?.snapshots)
    }

    /// Reads the table as `qemu-img check` does: bytes past the end of the
    /// file read as zero and snapshot L1 tables are not validated (the
    /// checker reports those). Without `repair`, extra data over 1024
    /// bytes and a table over 64 MiB are errors; with it, extra data is cut
    /// to 1024 bytes and the entries that push the table over 64 MiB are
    /// dropped, as `qemu-img check -r all` does. The caller bounds
    /// `nb_snapshots` (at most 65536).
    pub fn read_for_check(
        storage: &dyn Storage,
        offset: u64,
        nb_snapshots: u32,
        repair: bool,
    ) -> Result<CheckRead> {
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::InvalidTable {
                table: "snapshot table",
                offset,
                entries: nb_snapshots.into(),
                reason: "more than 65536 snapshots",
            });
        }
        read_entries(storage, offset, nb_snapshots, repair)
    }

    /// Bytes [`SnapshotTable::write`] produces for `snapshots`.
    pub fn written_size(snapshots: &[Snapshot]) -> u64 {
        snapshots
            .iter()
            .fold(0u64, |len, s| len.next_multiple_of(8) + s.written_len())
    }

    /// Serialises the table as QEMU writes it: every entry gets 24 bytes of
    /// known extra data (vm_state_size_large, disk_size, icount with -1 for
    /// none; a missing disk_size is written as 0, so set it to the virtual
    /// size first) followed by the unknown extra data; the 32-bit VM state
    /// size is 0 when the size does not fit. IDs and names longer than
    /// 65535 bytes are cut.
    pub fn write(snapshots: &[Snapshot]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::written_size(snapshots) as usize);
        for s in snapshots {
            out.resize(out.len().next_multiple_of(8), 0);
            let id = &s.id.as_bytes()[..s.id.len().min(u16::MAX as usize)];
            let name = &s.name.as_bytes()[..s.name.len().min(u16::MAX as usize)];
            let extra_len = KNOWN_EXTRA_DATA as usize + s.unknown_extra_data.len();
            let mut h = [0u8; ENTRY_HEADER_LEN as usize];
            BigEndian::write_u64(&mut h[0..8], s.l1_table_offset);
            BigEndian::write_u32(&mut h[8..12], s.l1_size);
            BigEndian::write_u16(&mut h[12..14], id.len() as u16);
            BigEndian::write_u16(&mut h[14..16], name.len() as u16);
            BigEndian::write_u32(&mut h[16..20], s.date_sec);
            BigEndian::write_u32(&mut h[20..24], s.date_nsec);
            BigEndian::write_u64(&mut h[24..32], s.vm_clock_nsec);
            BigEndian::write_u32(&mut h[32..36], u32::try_from(s.vm_state_size).unwrap_or(0));
            BigEndian::write_u32(&mut h[36..40], extra_len as u32);
            out.extend_from_slice(&h);
            let mut known = [0u8; KNOWN_EXTRA_DATA as usize];
            BigEndian::write_u64(&mut known[0..8], s.vm_state_size);
            BigEndian::write_u64(&mut known[8..16], s.disk_size.unwrap_or(0));
            BigEndian::write_u64(&mut known[16..24], s.icount.unwrap_or(u64::MAX));
            out.extend_from_slice(&known);
            out.extend_from_slice(&s.unknown_extra_data);
            out.extend_from_slice(id);
            out.extend_from_slice(name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn sample(i: u32) -> Snapshot {
        Snapshot {
            l1_table_offset: 0x30000 + u64::from(i) * 0x10000,
            l1_size: 2,
            id: (i + 1).to_string(),
            name: format!("snap{i}"),
            date_sec: 1_700_000_000 + i,
            date_nsec: 5,
            vm_clock_nsec: 77,
            vm_state_size: 0,
            extra_data_size: KNOWN_EXTRA_DATA,
            disk_size: Some(1 << 30),
            icount: None,
            unknown_extra_data: Vec::new(),
        }
    }

    fn storage_with(table: &[u8], table_offset: u64, len: u64) -> MemStorage {
        let s = MemStorage::new();
        s.set_len(len).unwrap();
        s.write_at(table, table_offset).unwrap();
        s
    }

    #[test]
    fn round_trip() {
        let mut snaps: Vec<Snapshot> = (0..3).map(sample).collect();
        snaps[1].unknown_extra_data = b"very important data".to_vec();
        snaps[1].extra_data_size = KNOWN_EXTRA_DATA + 19;
        snaps[2].vm_state_size = 5 << 32;
        snaps[2].icount = Some(1234);
        let bytes = SnapshotTable::write(&snaps);
        assert_eq!(bytes.len() as u64, SnapshotTable::written_size(&snaps));
        let s = storage_with(&bytes, 0x10000, 0x80000);
        let back = SnapshotTable::parse(&s, 0x10000, 3, 0x10000).unwrap();
        assert_eq!(back, snaps);
        // The 32-bit field is zero when the VM state does not fit.
        let second = 8 * (sample(0).written_len().div_ceil(8)) as usize;
        let third = second + 8 * (snaps[1].written_len().div_ceil(8)) as usize;
        assert_eq!(BigEndian::read_u32(&bytes[third + 32..third + 36]), 0);
        let lenient = SnapshotTable::read_for_check(&s, 0x10000, 3, false).unwrap();
        assert_eq!(lenient.snapshots, snaps);
        assert_eq!(lenient.table_size, bytes.len() as u64);
    }

    #[test]
    fn old_entries_without_extra_data() {
        // A version 2 style entry: no extra data at all.
        let mut e = vec![0u8; 40];
        BigEndian::write_u64(&mut e[0..8], 0x20000);
        BigEndian::write_u32(&mut e[8..12], 1);
        BigEndian::write_u16(&mut e[12..14], 1);
        BigEndian::write_u16(&mut e[14..16], 2);
        BigEndian::write_u32(&mut e[32..36], 4096);
        e.extend_from_slice(b"1ab");
        let s = storage_with(&e, 0x10000, 0x30000);
        let snaps = SnapshotTable::parse(&s, 0x10000, 1, 0x10000).unwrap();
        assert_eq!(snaps[0].vm_state_size, 4096);
        assert_eq!(snaps[0].disk_size, None);
        assert_eq!(snaps[0].extra_data_size, 0);
        assert_eq!(snaps[0].name, "ab");
    }

    #[test]
    fn entries_past_the_end_read_as_zero() {
        // As QEMU at open: 60000 entries where the file holds one; the
        // rest read as zero (empty names, no L1 table), bounded.
        let bytes = SnapshotTable::write(&[sample(0)]);
        let s = storage_with(&bytes, 0x10000, 0x20000);
        let snaps = SnapshotTable::parse(&s, 0x10000, 60000, 0x10000).unwrap();
        assert_eq!(snaps.len(), 60000);
        assert_eq!(snaps[0], sample(0));
        assert_eq!((snaps[1].name.as_str(), snaps[1].l1_size), ("", 0));
        let e = SnapshotTable::parse(&s, 0x10000, 70000, 0x10000).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
        let r = SnapshotTable::read_for_check(&s, 0x10000, 60000, false).unwrap();
        assert_eq!(r.snapshots.len(), 60000);
    }

    #[test]
    fn hostile_name_length() {
        let mut bytes = SnapshotTable::write(&[sample(0)]);
        BigEndian::write_u16(&mut bytes[14..16], 0xffff);
        let len = 0x10000 + bytes.len() as u64 + 100;
        let s = storage_with(&bytes, 0x10000, len);
        // The name runs past the end of the file, which reads as zeros;
        // QEMU keeps it as a C string, up to the first NUL.
        let snaps = SnapshotTable::parse(&s, 0x10000, 1, 0x10000).unwrap();
        assert_eq!(snaps[0].name, sample(0).name);
    }

    #[test]
    fn hostile_extra_data() {
        let mut bytes = SnapshotTable::write(&[sample(0)]);
        BigEndian::write_u32(&mut bytes[36..40], 0xffff_fff0);
        let s = storage_with(&bytes, 0x10000, 0x40000);
        let e = SnapshotTable::parse(&s, 0x10000, 1, 0x10000).unwrap_err();
        let msg = e.to_string();
        // QEMU's words, with its hint.
        assert!(
            msg.starts_with("Too much extra metadata in snapshot table entry 0\n"),
            "{msg}"
        );
        let e = SnapshotTable::read_for_check(&s, 0x10000, 1, false).unwrap_err();
        assert!(matches!(
            e,
            Error::SnapshotExtraDataTooLarge {
                index: 0,
                size: 0xffff_fff0
            }
        ));
        // Repairing: the extra data is cut to 1024 bytes, then the entry's
        // real end (4 GiB further) makes the table too big, so it goes.
        let r = SnapshotTable::read_for_check(&s, 0x10000, 1, true).unwrap();
        assert_eq!(r.dropped, 1);
        assert!(r.snapshots.is_empty());
        assert_eq!(r.truncated, vec![(0, 0xffff_fff0)]);
        // 2000 bytes of extra data: cut, kept.
        let mut bytes = SnapshotTable::write(&[sample(0)]);
        BigEndian::write_u32(&mut bytes[36..40], 2000);
        let s = storage_with(&bytes, 0x10000, 0x40000);
        let r = SnapshotTable::read_for_check(&s, 0x10000, 1, true).unwrap();
        assert_eq!(r.truncated, vec![(0, 2000)]);
        assert_eq!(r.snapshots[0].extra_data_size, MAX_EXTRA_DATA);
        assert_eq!(r.snapshots[0].unknown_extra_data.len(), 1000);
    }

    #[test]
    fn snapshot_l1_is_checked_on_use_in_qemus_words() {
        let mut snap = sample(0);
        snap.l1_table_offset = 0x30200;
        // The table still opens.
        let s = storage_with(&SnapshotTable::write(&[snap.clone()]), 0x10000, 0x40000);
        assert_eq!(
            SnapshotTable::parse(&s, 0x10000, 1, 0x10000).unwrap()[0],
            snap
        );
        let e = snap.validate_l1(0x10000).unwrap_err();
        assert_eq!(e.to_string(), "Snapshot L1 table offset invalid");
        // Size is checked first, as QEMU does.
        snap.l1_size = 0x1000_0000;
        let e = snap.validate_l1(0x10000).unwrap_err();
        assert_eq!(e.to_string(), "Snapshot L1 table too large");
        assert!(matches!(
            e,
            Error::SnapshotL1Refused {
                field: "l1_size",
                value: 0x1000_0000,
                ..
            }
        ));
        snap.l1_size = 1;
        snap.l1_table_offset = !0xffff;
        let e = snap.validate_l1(0x10000).unwrap_err();
        assert_eq!(e.to_string(), "Snapshot L1 table offset invalid");
        snap.l1_table_offset = 0x30000;
        snap.l1_size = 0x4000;
        snap.validate_l1(0x10000).unwrap();
    }
}
