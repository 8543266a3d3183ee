//! QED images: a header cluster, an L1 table and L2 tables of little-endian
//! u64 cluster offsets (0 unallocated, 1 a zero cluster), data clusters.
//!
//! L2 tables are loaded on demand into a cache bounded in bytes. A write to
//! an unallocated cluster appends the cluster (and a new L2 table when the
//! L1 entry is empty) at the end of the file, then points the L2 entry and
//! the L1 entry at them. An image may name a backing file (its name after
//! the header fields, probed unless the raw feature bit says raw): its
//! unallocated clusters read from it, and a partial write to one copies
//! the rest of the cluster up from it first, as QEMU's qed does.

pub mod header;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use byteorder::{ByteOrder, LittleEndian};

use self::header::{
    Header, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK, HEADER_LEN, MAX_BACKING_NAME,
};
use super::{invalid, read_table, BackingFile, CheckReport, ForeignImage};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "qed";
/// Bytes of L2 tables kept in memory before the cache is emptied.
const L2_CACHE_BYTES: u64 = 64 << 20;
/// An L2 entry of a zero cluster.
const ZERO_CLUSTER: u64 = 1;

/// Where a guest cluster lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    Unallocated,
    Zero,
    Data(u64),
}

/// An open QED image.
pub struct Qed {
    storage: Arc<dyn Storage>,
    header: Header,
    l1: RwLock<Vec<u64>>,
    l2_cache: RwLock<HashMap<u64, Arc<Vec<u64>>>>,
    /// The end of the file in whole clusters; held while allocating.
    next_cluster: Mutex<u64>,
    /// The same, readable without the lock.
    file_clusters: AtomicU64,
    /// Bumped by every change to a cached table, so that a table read
    /// from the file while it changed is not cached stale.
    generation: AtomicU64,
    writable: bool,
    /// The backing file the header names.
    backing_file: Option<BackingFile>,
    /// The backing layer, once the opener has opened it.
    backing: Option<Box<dyn BlockRead>>,
}

/// A backing file for a new image: its name, and whether it is raw (the
/// only format QED records; any other is probed).
#[derive(Debug, Clone, Copy)]
pub struct NewBacking<'a> {
    /// The name as it is to be recorded.
    pub name: &'a str,
    /// Whether the backing file is raw.
    pub raw: bool,
}

/// Writes a new, empty QED image into empty `storage`, naming `backing`
/// after the header fields as QEMU does.
pub fn create(
    storage: &dyn Storage,
    size: u64,
    cluster_size: u32,
    table_size: u32,
    backing: Option<NewBacking<'_>>,
) -> Result<()> {
    let mut features = 0;
    let (mut name_offset, mut name_size) = (0, 0);
    if let Some(b) = backing {
        if b.name.len() > MAX_BACKING_NAME as usize {
            return Err(invalid(
                FORMAT,
                "backing_file",
                b.name.len() as u64,
                "the name is too long",
            ));
        }
        features |= F_BACKING_FILE;
        if b.raw {
            features |= F_BACKING_FORMAT_NO_PROBE;
        }
        name_offset = HEADER_LEN as u32;
        name_size = b.name.len() as u32;
    }
    let header = Header {
        cluster_size,
        table_size,
        header_size: 1,
        features,
        compat_features: 0,
        autoclear_features: 0,
        l1_table_offset: u64::from(cluster_size),
        image_size: size,
        backing_filename_offset: name_offset,
        backing_filename_size: name_size,
    };
    let mut check = [0u8; HEADER_LEN];
    check.copy_from_slice(&header.to_bytes());
    Header::parse(&check)?;
    storage.write_at(&header.to_bytes(), 0)?;
    if let Some(b) = backing {
        storage.write_at(b.name.as_bytes(), u64::from(name_offset))?;
    }
    storage.set_len(header.l1_table_offset + header.table_bytes())?;
    storage.flush()
}

impl Qed {
    /// Opens a QED image.
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Qed> {
        let mut raw = [0u8; HEADER_LEN];
        storage.read_at(&mut raw, 0)?;
        let header = Header::parse(&raw)?;
        header.check_open()?;
        let backing_file = Self::read_backing_name(&*storage, &header)?;
        if writable && header.features & F_NEED_CHECK != 0 {
            return Err(Error::Unsupported(
                "a qed image that needs a check cannot be opened for writing; run 'qemu-img check -r all'".into(),
            ));
        }
        let bytes = read_table(
            &*storage,
            FORMAT,
            "L1 table",
            header.l1_table_offset,
            header.table_bytes(),
            header::MAX_TABLE_BYTES,
        )?;
        let l1 = bytes.chunks_exact(8).map(LittleEndian::read_u64).collect();
        let cs = u64::from(header.cluster_size);
        let next_cluster = storage.len()?.div_ceil(cs);
        Ok(Qed {
            storage,
            header,
            l1: RwLock::new(l1),
            l2_cache: RwLock::new(HashMap::new()),
            next_cluster: Mutex::new(next_cluster),
            file_clusters: AtomicU64::new(next_cluster),
            generation: AtomicU64::new(0),
            writable,
            backing_file,
            backing: None,
        })
    }

    /// The backing file the header names (its size already bounded by
    /// the header's check).
    fn read_backing_name(storage: &dyn Storage, header: &Header) -> Result<Option<BackingFile>> {
        if header.features & F_BACKING_FILE == 0 {
            return Ok(None);
        }
        let mut name = vec![0u8; header.backing_filename_size as usize];
        storage.read_at(&mut name, header.backing_filename_offset.into())?;
        let name = String::from_utf8(name).map_err(|_| {
            invalid(
                FORMAT,
                "backing_filename_offset",
                header.backing_filename_offset.into(),
                "the backing file name is not UTF-8",
            )
        })?;
        if name.is_empty() {
            return Ok(None);
        }
        let format = (header.features & F_BACKING_FORMAT_NO_PROBE != 0).then_some("raw");
        Ok(Some(BackingFile { name, format }))
    }

    fn cluster_bytes(&self) -> u64 {
        u64::from(self.header.cluster_size)
    }

    /// Whether `offset` may hold a cluster or table: cluster-aligned, after
    /// the header, before the end of the file (QEMU's check).
    fn valid_offset(&self, offset: u64, file_clusters: u64) -> bool {
        offset.is_multiple_of(self.cluster_bytes())
            && offset >= self.header.header_bytes()
            && offset / self.cluster_bytes() < file_clusters
    }

    fn file_clusters(&self) -> u64 {
        self.file_clusters.load(Ordering::Acquire)
    }

    /// The L2 table at `offset`.
    fn l2(&self, offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self
            .l2_cache
            .read()
            .expect("cache lock poisoned")
            .get(&offset)
        {
            return Ok(t.clone());
        }
        // The whole table must lie in the file, as QEMU checks it.
        let file_clusters = self.file_clusters();
        let last = offset.saturating_add(self.header.table_bytes() - self.cluster_bytes());
        if !self.valid_offset(offset, file_clusters) || !self.valid_offset(last, file_clusters) {
            return Err(invalid(
                FORMAT,
                "L2 table offset",
                offset,
                "the table is not inside the file",
            ));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mut bytes = vec![0u8; self.header.table_bytes() as usize];
        self.storage.read_at(&mut bytes, offset)?;
        let table: Arc<Vec<u64>> =
            Arc::new(bytes.chunks_exact(8).map(LittleEndian::read_u64).collect());
        let mut cache = self.l2_cache.write().expect("cache lock poisoned");
        if self.generation.load(Ordering::Acquire) != generation {
            return Ok(table);
        }
        if (cache.len() as u64 + 1) * self.header.table_bytes() > L2_CACHE_BYTES {
            cache.clear();
        }
        Ok(cache.entry(offset).or_insert(table).clone())
    }

    fn indexes(&self, guest: u64) -> (usize, usize) {
        let cluster = guest / self.cluster_bytes();
        let entries = self.header.table_entries();
        ((cluster / entries) as usize, (cluster % entries) as usize)
    }

    /// Where the cluster of guest byte `guest` lives.
    fn lookup(&self, guest: u64) -> Result<Cluster> {
        let (l1_index, l2_index) = self.indexes(guest);
        let l2_offset = self.l1.read().expect("L1 lock poisoned")[l1_index];
        if l2_offset == 0 {
            return Ok(Cluster::Unallocated);
        }
        let entry = self.l2(l2_offset)?[l2_index];
        Ok(match entry {
            0 => Cluster::Unallocated,
            ZERO_CLUSTER => Cluster::Zero,
            offset if self.valid_offset(offset, self.file_clusters()) => Cluster::Data(offset),
            offset => {
                return Err(invalid(
                    FORMAT,
                    "L2 entry",
                    offset,
                    "not a cluster of the file",
                ))
            }
        })
    }

    /// Allocates the cluster of guest byte `guest` unless another writer
    /// did; returns its offset.
    fn allocate(&self, guest: u64) -> Result<u64> {
        let mut next = self.next_cluster.lock().expect("allocation lock poisoned");
        let (l1_index, l2_index) = self.indexes(guest);
        let cs = self.cluster_bytes();
        let mut l2_offset = self.l1.read().expect("L1 lock poisoned")[l1_index];
        // With the lock held no other writer changes a table, so the
        // table (cached or read) is current.
        let table = if l2_offset == 0 {
            l2_offset = *next * cs;
            *next += u64::from(self.header.table_size);
            super::grow_to(&*self.storage, *next * cs)?;
            self.file_clusters.store(*next, Ordering::Release);
            Arc::new(vec![0u64; self.header.table_entries() as usize])
        } else {
            self.l2(l2_offset)?
        };
        if let Some(offset) = Some(table[l2_index]).filter(|&e| e > ZERO_CLUSTER) {
            return Ok(offset);
        }
        let data = *next * cs;
        *next += 1;
        super::grow_to(&*self.storage, *next * cs)?;
        self.file_clusters.store(*next, Ordering::Release);
        let mut entry = [0u8; 8];
        LittleEndian::write_u64(&mut entry, data);
        self.storage
            .write_at(&entry, l2_offset + l2_index as u64 * 8)?;
        let mut updated = (*table).clone();
        updated[l2_index] = data;
        {
            let mut cache = self.l2_cache.write().expect("cache lock poisoned");
            cache.insert(l2_offset, Arc::new(updated));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let mut l1 = self.l1.write().expect("L1 lock poisoned");
        if l1[l1_index] != l2_offset {
            LittleEndian::write_u64(&mut entry, l2_offset);
            self.storage
                .write_at(&entry, self.header.l1_table_offset + l1_index as u64 * 8)?;
            l1[l1_index] = l2_offset;
        }
        Ok(data)
    }
}

impl BlockRead for Qed {
    fn virtual_size(&self) -> u64 {
        self.header.image_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.header.image_size)?;
        let cs = self.cluster_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = (cs - pos % cs).min((buf.len() - done) as u64) as usize;
            match self.lookup(pos)? {
                Cluster::Data(h) => self
                    .storage
                    .read_at(&mut buf[done..done + n], h + pos % cs)?,
                Cluster::Zero => buf[done..done + n].fill(0),
                Cluster::Unallocated => {
                    super::read_backing(self.backing.as_deref(), &mut buf[done..done + n], pos)?
                }
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset
            + len
                .min(self.header.image_size.saturating_sub(offset))
                .min(1 << 30);
        let cs = self.cluster_bytes();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let span = cs * self.header.table_entries();
        let mut steps = 0;
        while pos < end && steps < super::MAX_EXTENT_STEPS {
            steps += 1;
            let (l1_index, _) = self.indexes(pos);
            if self.l1.read().expect("L1 lock poisoned")[l1_index] == 0 {
                // No L2 table: its whole span is unallocated.
                let n = (span - pos % span).min(end - pos);
                let kind = ExtentKind::Unallocated { host_offset: None };
                super::push_extent(&mut out, pos, n, kind);
                pos += n;
                continue;
            }
            let n = (cs - pos % cs).min(end - pos);
            let kind = match self.lookup(pos)? {
                Cluster::Data(h) => ExtentKind::Data {
                    host_offset: h + pos % cs,
                    file: FileIndex::IMAGE,
                },
                Cluster::Zero => ExtentKind::Zero { host_offset: None },
                Cluster::Unallocated => ExtentKind::Unallocated { host_offset: None },
            };
            super::push_extent(&mut out, pos, n, kind);
            pos += n;
        }
        Ok(out)
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        self.backing.as_deref()
    }

    fn format_name(&self) -> &'static str {
        FORMAT
    }

    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        LayerFile::own(&self.storage, file)
    }
}

impl ForeignImage for Qed {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.header.image_size)?;
        let cs = self.cluster_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = (cs - pos % cs).min((buf.len() - done) as u64) as usize;
            let part = &buf[done..done + n];
            match (self.lookup(pos)?, self.backing.as_deref()) {
                (Cluster::Data(h), _) => self.storage.write_at(part, h + pos % cs)?,
                (Cluster::Unallocated, Some(backing)) if (n as u64) < cs => {
                    let start = pos - pos % cs;
                    let len = cs.min(self.header.image_size - start);
                    let unit = super::copy_on_write_unit(backing, start, len, part, pos)?;
                    let host = self.allocate(pos)?;
                    self.storage.write_at(&unit, host)?;
                }
                (Cluster::Zero | Cluster::Unallocated, _) => {
                    let host = self.allocate(pos)?;
                    self.storage.write_at(part, host + pos % cs)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.storage.flush()
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        Some(&self.storage)
    }

    /// QEMU's `bdrv_qed_change_backing_file`: the header again with the
    /// name right after it, the backing-file feature set or cleared, and
    /// "no probing" set exactly when the new backing file is raw.
    fn set_backing_name(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut header = self.header;
        header.features &= !(header::F_BACKING_FILE | header::F_BACKING_FORMAT_NO_PROBE);
        let name = name.unwrap_or("");
        if !name.is_empty() {
            header.features |= header::F_BACKING_FILE;
            if format == Some("raw") {
                header.features |= header::F_BACKING_FORMAT_NO_PROBE;
            }
        }
        let room = header.header_bytes() - header::HEADER_LEN as u64;
        if name.len() as u64 > room.min(header::MAX_BACKING_NAME.into()) {
            return Err(invalid(
                FORMAT,
                "backing file name length",
                name.len() as u64,
                "does not fit in the header (No space left on device)",
            ));
        }
        header.backing_filename_offset = if name.is_empty() {
            0
        } else {
            header::HEADER_LEN as u32
        };
        header.backing_filename_size = name.len() as u32;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(name.as_bytes());
        self.storage.write_at(&bytes, 0)?;
        self.storage.flush()
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.cluster_bytes())
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        Some(self.check_tables())
    }

    fn is_dirty(&self) -> bool {
        self.header.features & F_NEED_CHECK != 0
    }

    fn backing_file(&self) -> Option<BackingFile> {
        self.backing_file.clone()
    }

    fn set_backing(&mut self, backing: Box<dyn BlockRead>) {
        self.backing = Some(backing);
    }
}

impl Qed {
    /// QEMU's qed check: valid table and cluster offsets, every cluster of
    /// the file used once (corruptions) or at all (leaks), and the
    /// allocated and fragmented cluster counts.
    fn check_tables(&self) -> Result<CheckReport> {
        let cs = self.cluster_bytes();
        let file_clusters = self.storage.len()?.div_ceil(cs);
        let mut report = CheckReport {
            total_clusters: self.header.image_size.div_ceil(cs),
            ..CheckReport::default()
        };
        let mut used = vec![false; file_clusters as usize];
        let mut mark = |first: u64, count: u64, report: &mut CheckReport| {
            for c in first..first + count {
                match used.get_mut(c as usize) {
                    Some(slot) if !*slot => *slot = true,
                    _ => report.corruptions += 1,
                }
            }
        };
        let header_clusters = u64::from(self.header.header_size);
        let table_clusters = u64::from(self.header.table_size);
        mark(0, header_clusters, &mut report);
        mark(
            self.header.l1_table_offset / cs,
            table_clusters,
            &mut report,
        );
        let l1 = self.l1.read().expect("L1 lock poisoned").clone();
        for &l2_offset in l1.iter().filter(|&&o| o != 0) {
            if !self.valid_offset(l2_offset, file_clusters) {
                report.corruptions += 1;
                continue;
            }
            mark(l2_offset / cs, table_clusters, &mut report);
            let table = self.l2(l2_offset)?;
            let mut last = 0u64;
            for &entry in table.iter().filter(|&&e| e > ZERO_CLUSTER) {
                report.allocated_clusters += 1;
                if last != 0 && last.checked_add(cs) != Some(entry) {
                    report.fragmented_clusters += 1;
                }
                last = entry;
                if self.valid_offset(entry, file_clusters) {
                    mark(entry / cs, 1, &mut report);
                } else {
                    report.corruptions += 1;
                }
            }
        }
        report.leaks = used
            .iter()
            .skip(header_clusters as usize)
            .filter(|u| !**u)
            .count() as u64;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
