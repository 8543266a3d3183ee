//! A snapshot's VM-state area mapped once onto the image file: where each
//! byte of the area lies in the file (or that it reads as zero), from the
//! snapshot table, the snapshot's L1 table and its L2 tables read a single
//! time. A reader that reads the area piece by piece (the VMM's lazy RAM
//! loader reads a few thousand record headers, then every record) then
//! reads each piece with plain positioned reads of the file, where
//! [`Qcow2::read_vm_state`] looks the snapshot and its tables up again for
//! every read.
//!
//! The map is built from untrusted tables and checked as
//! [`Qcow2::read_vm_state`] checks them: every table and data cluster
//! aligned and inside the file, no compressed cluster; and it is bounded:
//! an area that needs more than [`MAX_MAP_PIECES`] pieces is refused.

use std::sync::Arc;

use super::vmstate::vm_state_offset;
use super::Qcow2;
use crate::entries::{alloc_bits, table_get, L2Entry, RawL2, OFFSET_MASK, SUBCLUSTERS};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The most pieces a map may have: 262,144 pieces are 4 MiB of map. A
/// state written by [`super::VmStateWriter`] is in one piece per 4 MiB
/// at most (16 GiB of state in 4,096).
pub const MAX_MAP_PIECES: usize = 1 << 18;

/// Where a snapshot's VM-state area lies in the image file
/// ([`Qcow2::vm_state_map`]).
pub struct VmStateMap {
    file: Arc<dyn Storage>,
    /// The area's length (the snapshot's `vm_state_size`).
    size: u64,
    /// Pieces in ascending order of area position, the first at 0, each
    /// ending where the next starts (the last at `size`).
    pieces: Vec<Piece>,
}

/// A run of the area lying contiguously in the file, or reading as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Its first byte's position in the area.
    pos: u64,
    /// Where that byte lies in the file; `None`: the run reads as zero.
    host: Option<u64>,
}

impl std::fmt::Debug for VmStateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmStateMap")
            .field("size", &self.size)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl VmStateMap {
    /// The area's length in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the area is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// How many pieces (file runs and zero runs) the area is in.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Appends `[pos, ...)` lying at `host` in the file (or zero), merged
    /// with the last piece when it continues it.
    fn push(&mut self, pos: u64, host: Option<u64>) -> Result<()> {
        if let Some(last) = self.pieces.last() {
            let continues = match (last.host, host) {
                (None, None) => true,
                (Some(a), Some(b)) => a.checked_add(pos - last.pos) == Some(b),
                _ => false,
            };
            if continues {
                return Ok(());
            }
        }
        if self.pieces.len() == MAX_MAP_PIECES {
            return Err(Error::Unsupported(format!(
                "a VM-state area in more than {MAX_MAP_PIECES} pieces"
            )));
        }
        self.pieces.push(Piece { pos, host });
        Ok(())
    }

    /// Starts a thread that asks the kernel to read the whole area into
    /// the page cache, in area order (a state written with O_DIRECT is
    /// not there: a revert's first reads would wait for the disk), and
    /// returns. The thread reads through a descriptor of its own, opened
    /// anew, so it holds neither the image nor its locks (OFD locks
    /// belong to the image's own descriptor). Best effort; storage that
    /// is not a file is left alone.
    pub fn start_read_ahead(&self) {
        use std::os::unix::io::AsRawFd;
        let Some(file) = self.file.as_file() else {
            return;
        };
        let Ok(own) = std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
            return;
        };
        let ranges: Vec<(u64, u64)> = self
            .pieces
            .iter()
            .enumerate()
            .filter_map(|(i, piece)| {
                let end = self.pieces.get(i + 1).map_or(self.size, |p| p.pos);
                piece.host.map(|host| (host, end - piece.pos))
            })
            .collect();
        let _ = std::thread::Builder::new()
            .name("vm-state-read-ahead".into())
            .spawn(move || {
                for (host, len) in ranges {
                    crate::sys::will_need(&own, host, len);
                }
            });
    }

    /// Fills `buf` from area position `pos`: one positioned read per file
    /// piece it spans. Refuses a range past the area's end.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        crate::device::check_range(pos, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        // The piece holding `pos`: the first starts at 0.
        let mut i = self.pieces.partition_point(|p| p.pos <= pos) - 1;
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let piece = self.pieces[i];
            let piece_end = self.pieces.get(i + 1).map_or(self.size, |p| p.pos);
            let n = (piece_end - at).min((buf.len() - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            match piece.host {
                None => out.fill(0),
                Some(host) => self.file.read_at(out, host + (at - piece.pos))?,
            }
            done += n;
            i += 1;
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Maps the VM-state area of snapshot `id_or_name` onto the image file
    /// (see [`VmStateMap`]): reads return what [`Qcow2::read_vm_state`]
    /// returns for the same range.
    pub fn vm_state_map(&self, id_or_name: &str) -> Result<VmStateMap> {
        let snapshot = self.find_snapshot_entry(id_or_name)?;
        snapshot.validate_l1(self.cluster_size())?;
        let size = snapshot.vm_state_size;
        let mut map = VmStateMap {
            file: self.file.clone(),
            size,
            pieces: Vec::new(),
        };
        if size == 0 {
            return Ok(map);
        }
        let cs = self.cluster_size();
        let l2_entries = self.geo.l2_entries();
        let span = cs * l2_entries;
        let disk_size = snapshot.disk_size.unwrap_or(self.size());
        let area = vm_state_offset(disk_size, self.geo.cluster_bits, self.geo.extended_l2);
        let end = area.checked_add(size).ok_or(Error::OutOfRange {
            offset: 0,
            len: size,
            size,
        })?;
        let file_len = self.file.len()?;
        let l1_size = u64::from(snapshot.l1_size);
        let first_l1 = area / span;
        // L1 entries past the table read as zero.
        let mapped_l1 = ((end - 1) / span + 1).min(l1_size);
        let mut l1_raw = Vec::new();
        if first_l1 < mapped_l1 {
            l1_raw = vec![0u8; ((mapped_l1 - first_l1) * 8) as usize];
            self.file
                .read_at(&mut l1_raw, snapshot.l1_table_offset + first_l1 * 8)?;
        }
        let mut table = vec![0u8; cs as usize];
        for l1_index in first_l1..mapped_l1 {
            let from = area.max(l1_index * span);
            let to = end.min((l1_index + 1) * span);
            let l2_offset = table_get(&l1_raw, (l1_index - first_l1) as usize) & OFFSET_MASK;
            if l2_offset == 0 {
                map.push(from - area, None)?;
                continue;
            }
            self.check_vm_state_l2_table(l1_index, l2_offset, file_len)?;
            self.file.read_at(&mut table, l2_offset)?;
            let mut guest = from;
            while guest < to {
                let cluster = guest / cs;
                let raw = RawL2::get(
                    &table,
                    (cluster % l2_entries) as usize,
                    self.geo.extended_l2,
                );
                self.map_cluster(&mut map, raw, cluster, area, file_len)?;
                guest = (cluster + 1) * cs;
            }
        }
        let mapped_end = mapped_l1 * span;
        if mapped_end < end {
            map.push(mapped_end.max(area) - area, None)?;
        }
        Ok(map)
    }

    /// Appends cluster `cluster` (of the guest address space; the area
    /// starts at `area`, cluster-aligned) described by `raw` to `map`.
    fn map_cluster(
        &self,
        map: &mut VmStateMap,
        raw: RawL2,
        cluster: u64,
        area: u64,
        file_len: u64,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let pos = cluster * cs - area;
        match self.geo.decode_l2(raw.entry) {
            L2Entry::Unallocated | L2Entry::Zero { .. } => map.push(pos, None),
            L2Entry::Compressed { .. } => Err(Error::Unsupported(
                "a compressed cluster in a snapshot's VM state".into(),
            )),
            L2Entry::Normal { host_offset, .. } => {
                self.check_vm_state_data_cluster(cluster, host_offset, file_len)?;
                if !self.geo.extended_l2 {
                    return map.push(pos, Some(host_offset));
                }
                // Subclusters not marked allocated read as zero.
                let sc = cs / u64::from(SUBCLUSTERS);
                let alloc = alloc_bits(raw.bitmap);
                for sub in 0..u64::from(SUBCLUSTERS) {
                    let host = (alloc & (1 << sub) != 0).then_some(host_offset + sub * sc);
                    map.push(pos + sub * sc, host)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::VmStateInfo;
    use super::*;
    use crate::formats::qcow2::create::{create, CreateOptions};
    use crate::storage::MemStorage;

    fn image(extended_l2: bool) -> Qcow2 {
        let opts = CreateOptions {
            size: 3 << 20,
            extended_l2,
            ..CreateOptions::default()
        };
        create(Arc::new(MemStorage::default()), None, None, &opts).unwrap()
    }

    fn snapshot(image: &Qcow2, name: &str, state: &[u8]) {
        let mut w = image.vm_state_writer().unwrap();
        for piece in state.chunks(5_000_011) {
            w.write_all(piece).unwrap();
        }
        let size = w.finish().unwrap();
        image
            .create_snapshot_with_vm_state(
                name,
                VmStateInfo {
                    vm_state_size: size,
                    vm_clock_nsec: 1,
                },
            )
            .unwrap();
    }

    fn state(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    #[test]
    fn reads_through_the_map_equal_reads_through_the_tables() {
        for extended in [false, true] {
            let image = image(extended);
            let one = state(19_000_003, 1);
            let two = state(70_001, 2);
            snapshot(&image, "one", &one);
            snapshot(&image, "two", &two);
            for (name, want) in [("one", &one), ("two", &two)] {
                let map = image.vm_state_map(name).unwrap();
                assert_eq!(map.len(), want.len() as u64);
                // The writer's clusters are contiguous per 8 MiB at most.
                assert!(map.pieces() <= 4, "{map:?}");
                let mut whole = vec![0u8; want.len()];
                map.read_at(0, &mut whole).unwrap();
                assert!(&whole == want, "{name}, extended {extended}");
                for (pos, len) in [(0u64, 20usize), (65_530, 70_000), (8 << 20, 1 << 20)] {
                    if pos as usize + len > want.len() {
                        continue;
                    }
                    let (mut a, mut b) = (vec![0u8; len], vec![1u8; len]);
                    map.read_at(pos, &mut a).unwrap();
                    image.read_vm_state(name, pos, &mut b).unwrap();
                    assert_eq!(a, b, "{name} at {pos}");
                }
                let mut past = [0u8; 2];
                assert!(map.read_at(want.len() as u64 - 1, &mut past).is_err());
            }
        }
    }

    #[test]
    fn a_disk_only_snapshot_maps_to_nothing() {
        let image = image(false);
        image.create_snapshot("disk").unwrap();
        let map = image.vm_state_map("disk").unwrap();
        assert!(map.is_empty());
        assert_eq!(map.pieces(), 0);
        assert!(image.vm_state_map("none").is_err());
    }

    #[test]
    fn pieces_merge_and_are_bounded() {
        let mut map = VmStateMap {
            file: Arc::new(MemStorage::default()),
            size: u64::MAX,
            pieces: Vec::new(),
        };
        map.push(0, Some(4096)).unwrap();
        map.push(512, Some(4608)).unwrap();
        map.push(1024, None).unwrap();
        map.push(2048, None).unwrap();
        assert_eq!(map.pieces(), 2);
        for i in 2..MAX_MAP_PIECES as u64 {
            map.push(i << 20, (i % 2 == 0).then_some(i << 30)).unwrap();
        }
        let err = map.push(1 << 62, Some(0)).unwrap_err();
        assert!(err.to_string().contains("pieces"), "{err}");
    }
}
