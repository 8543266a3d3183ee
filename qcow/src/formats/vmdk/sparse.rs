//! A VMDK hosted sparse extent: grain directory, grain tables (loaded on
//! demand into a bounded cache), plain and deflate-compressed grains.
//!
//! Writes of plain grains append a grain at the end of the file and point
//! the grain table entry (and the redundant table's) at it; a missing grain
//! table is appended too, except in a VMFS sparse ("COWD") extent, where
//! QEMU refuses such a write and so do we. Compressed (stream-optimized)
//! extents take each grain once, whole, as QEMU's vmdk driver does: a
//! grain's first write fills the next free grain-sized slot with zeros, or
//! with the parent's grain when the image has a backing file (QEMU's
//! get_whole_cluster; the file grows by the slot) and then, if the write
//! covers the grain (or the image's short last grain), puts its compressed
//! record at the slot's start, the next grain going right after the
//! record; a partial write fails with EINVAL once the slot is filled, a
//! write into an allocated grain with EIO.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use byteorder::{ByteOrder, LittleEndian};

use super::header::{parse_cowd, parse_footer, SparseHeader, COWD_MAGIC, GD_AT_END, HEADER_SIZE};
use super::FORMAT;
use crate::error::{Error, Result};
use crate::formats::{invalid, read_table};
use crate::storage::Storage;

/// Grain table entries kept in memory before the cache is emptied (4096
/// tables of 512 entries, 8 MiB; fewer of VMFS sparse's larger tables).
const GT_CACHE_ENTRIES: usize = 4096 * 512;
/// Bytes of a grain marker's header (lba, size).
const MARKER_HEADER: usize = 12;
/// Grain table entry of a zeroed grain (with the zero-grain flag).
const GTE_ZEROED: u32 = 1;
/// Idle compressors kept for reuse: one per thread that wrote at once,
/// up to this many (more writers than this free theirs after use).
const MAX_IDLE_COMPRESSORS: usize = 16;

/// A deflate stream and the buffer a grain record is built in, kept
/// across grains: allocating both for each grain made glibc's per-thread
/// arenas keep megabytes each (its mmap threshold rises past them once
/// they are freed), so writing threads kept what they freed.
struct Compressor {
    stream: flate2::Compress,
    record: Vec<u8>,
}

/// Where a guest range of the extent lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// No grain: reads as zero (or the parent's data).
    Unallocated,
    /// A zeroed grain.
    Zero,
    /// Plain data at this byte of the file.
    Data(u64),
    /// A compressed grain starting at this byte of the file.
    Compressed(u64),
}

/// Loaded grain tables by (redundant directory, directory index).
type TableCache = HashMap<(bool, u32), Arc<Vec<u32>>>;

struct Alloc {
    /// The next free sector of the file.
    next_sector: u64,
}

/// An open sparse extent.
pub struct SparseExtent {
    storage: Arc<dyn Storage>,
    header: SparseHeader,
    grain_bytes: u64,
    gd: RwLock<Vec<u32>>,
    rgd: Option<RwLock<Vec<u32>>>,
    gt_cache: RwLock<TableCache>,
    /// Bumped by every change to a cached table, so that a table read
    /// from the file while it changed is not cached stale.
    generation: AtomicU64,
    alloc: Mutex<Alloc>,
    /// Idle compressors (compressed extents only).
    compressors: Mutex<Vec<Compressor>>,
}

impl SparseExtent {
    /// Opens the sparse extent in `storage` (whose first sector holds its
    /// header); a stream-optimized extent with its tables at the end is
    /// read through its footer, as QEMU does.
    pub fn open(storage: Arc<dyn Storage>) -> Result<SparseExtent> {
        let file_len = storage.len()?;
        let mut raw = [0u8; HEADER_SIZE];
        storage.read_at(&mut raw, 0)?;
        if &raw[0..4] == COWD_MAGIC {
            let (header, entries) = parse_cowd(&raw)?;
            return Self::with_tables(storage, header, entries);
        }
        let mut header = SparseHeader::parse(&raw)?;
        if header.gd_offset == GD_AT_END {
            if file_len < 3 * HEADER_SIZE as u64 {
                return Err(invalid(FORMAT, "file length", file_len, "Invalid footer"));
            }
            let mut footer = [0u8; 3 * HEADER_SIZE];
            storage.read_at(&mut footer, file_len - 3 * HEADER_SIZE as u64)?;
            header = parse_footer(&footer)?;
        }
        let entries = header.validate()?;
        Self::with_tables(storage, header, entries)
    }

    /// Reads the directories of a validated `header` with `entries`
    /// directory entries.
    fn with_tables(
        storage: Arc<dyn Storage>,
        header: SparseHeader,
        entries: u64,
    ) -> Result<SparseExtent> {
        let file_len = storage.len()?;
        let read_dir = |sector: u64, what: &'static str| -> Result<Vec<u32>> {
            let offset = sector
                .checked_mul(512)
                .ok_or_else(|| invalid(FORMAT, what, sector, "offset overflows"))?;
            let bytes = read_table(
                &*storage,
                FORMAT,
                what,
                offset,
                entries * 4,
                super::header::MAX_GD_ENTRIES * 4,
            )?;
            Ok(bytes.chunks_exact(4).map(LittleEndian::read_u32).collect())
        };
        let gd = read_dir(header.gd_offset, "grain directory")?;
        let rgd = if header.flags & super::header::FLAG_RGD != 0 && header.rgd_offset != 0 {
            Some(RwLock::new(read_dir(
                header.rgd_offset,
                "redundant grain directory",
            )?))
        } else {
            None
        };
        let grain_bytes = header.grain_sectors * 512;
        // QEMU's next_cluster_sector: the file's sectors rounded up to a
        // grain, compressed or not.
        let next_sector = file_len.div_ceil(grain_bytes) * header.grain_sectors;
        Ok(SparseExtent {
            storage,
            header,
            grain_bytes,
            gd: RwLock::new(gd),
            rgd,
            gt_cache: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            alloc: Mutex::new(Alloc { next_sector }),
            compressors: Mutex::new(Vec::new()),
        })
    }

    /// The header in force (the footer's for stream-optimized extents).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// Whether this is a VMFS sparse ("COWD") extent (its tables hold
    /// 4096 entries, more than a hosted sparse header may declare).
    pub fn is_vmfs_sparse(&self) -> bool {
        self.header.gtes_per_gt == super::header::COWD_GTES_PER_GT
    }

    /// Guest bytes of the extent.
    pub fn len(&self) -> u64 {
        self.header.capacity * 512
    }

    /// Whether the extent holds no guest bytes.
    pub fn is_empty(&self) -> bool {
        self.header.capacity == 0
    }

    /// Bytes of a grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// The file.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The grain table `gd_index` of the directory (redundant when
    /// `redundant`), or `None` when the directory has none.
    fn table(&self, redundant: bool, gd_index: u32) -> Result<Option<Arc<Vec<u32>>>> {
        if let Some(t) = self
            .gt_cache
            .read()
            .expect("cache lock poisoned")
            .get(&(redundant, gd_index))
        {
            return Ok(Some(t.clone()));
        }
        let dir = match (redundant, &self.rgd) {
            (false, _) => &self.gd,
            (true, Some(rgd)) => rgd,
            (true, None) => return Ok(None),
        };
        let sector = dir
            .read()
            .expect("directory lock poisoned")
            .get(gd_index as usize)
            .copied()
            .unwrap_or(0);
        if sector == 0 {
            return Ok(None);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let entries = u64::from(self.header.gtes_per_gt);
        let mut bytes = vec![0u8; (entries * 4) as usize];
        self.storage.read_at(&mut bytes, u64::from(sector) * 512)?;
        let table: Arc<Vec<u32>> =
            Arc::new(bytes.chunks_exact(4).map(LittleEndian::read_u32).collect());
        let mut cache = self.gt_cache.write().expect("cache lock poisoned");
        if self.generation.load(Ordering::Acquire) != generation {
            return Ok(Some(table));
        }
        if cache.len() >= GT_CACHE_ENTRIES / self.header.gtes_per_gt as usize {
            cache.clear();
        }
        Ok(Some(
            cache.entry((redundant, gd_index)).or_insert(table).clone(),
        ))
    }

    fn indexes(&self, offset: u64) -> (u32, usize) {
        let grain = offset / self.grain_bytes;
        let per_gt = u64::from(self.header.gtes_per_gt);
        ((grain / per_gt) as u32, (grain % per_gt) as usize)
    }

    /// Where the grain holding byte `offset` of the extent lives, and the
    /// bytes left in that grain.
    pub fn lookup(&self, offset: u64) -> Result<(Grain, u64)> {
        let left = self.grain_bytes - offset % self.grain_bytes;
        let (gd_index, gt_index) = self.indexes(offset);
        let Some(table) = self.table(false, gd_index)? else {
            return Ok((Grain::Unallocated, left));
        };
        let entry = table[gt_index];
        let grain = match entry {
            0 => Grain::Unallocated,
            GTE_ZEROED if self.header.has_zero_grain() => Grain::Zero,
            sector if self.header.compressed() => Grain::Compressed(u64::from(sector) * 512),
            sector => Grain::Data(u64::from(sector) * 512 + offset % self.grain_bytes),
        };
        Ok((grain, left))
    }

    /// Like [`SparseExtent::lookup`], but the bytes returned run on past
    /// the grain while the grains that follow in the same table read
    /// alike (unallocated, zeroed, or plain data stored right after): a
    /// missing grain table is one run, not one lookup per grain. The run
    /// stops once it covers `want` bytes.
    pub fn run(&self, offset: u64, want: u64) -> Result<(Grain, u64)> {
        let (gd_index, gt_index) = self.indexes(offset);
        let per_gt = self.header.gtes_per_gt as usize;
        let Some(table) = self.table(false, gd_index)? else {
            let table_span = u64::from(self.header.gtes_per_gt) * self.grain_bytes;
            return Ok((Grain::Unallocated, table_span - offset % table_span));
        };
        let (grain, mut left) = self.lookup(offset)?;
        let first = table[gt_index];
        let step = match grain {
            Grain::Unallocated | Grain::Zero => 0,
            Grain::Data(_) => self.header.grain_sectors as u32,
            Grain::Compressed(_) => return Ok((grain, left)),
        };
        let mut expect = first;
        for &entry in &table[gt_index + 1..per_gt] {
            if left >= want {
                // Enough for the caller: a small read does not scan the
                // rest of the table.
                break;
            }
            expect = match expect.checked_add(step) {
                Some(e) => e,
                None => break,
            };
            if entry != expect {
                break;
            }
            left += self.grain_bytes;
        }
        Ok((grain, left))
    }

    /// Reads `buf.len()` bytes at `offset` of the extent (within one grain).
    pub fn read_in_grain(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self.lookup(offset)?.0 {
            Grain::Unallocated | Grain::Zero => {
                buf.fill(0);
                Ok(())
            }
            Grain::Data(host) => self.storage.read_at(buf, host),
            Grain::Compressed(host) => {
                let grain = self.read_compressed(host)?;
                let start = (offset % self.grain_bytes) as usize;
                match grain.get(start..start + buf.len()) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(Error::BadCompressedCluster {
                        host_offset: host,
                        reason: format!("the grain decompresses to {} bytes only", grain.len()),
                    }),
                }
            }
        }
    }

    /// Decompresses the grain at `host`.
    fn read_compressed(&self, host: u64) -> Result<Vec<u8>> {
        let (data_at, data_len) = if self.header.has_markers() {
            let mut marker = [0u8; MARKER_HEADER];
            self.storage.read_at(&mut marker, host)?;
            let size = u64::from(LittleEndian::read_u32(&marker[8..12]));
            if size == 0 || size > 2 * self.grain_bytes {
                return Err(Error::BadCompressedCluster {
                    host_offset: host,
                    reason: format!("grain marker size {size} is out of range"),
                });
            }
            (host + MARKER_HEADER as u64, size)
        } else {
            (host, 2 * self.grain_bytes)
        };
        let mut compressed = vec![0u8; data_len as usize];
        self.storage.read_at(&mut compressed, data_at)?;
        let mut out = vec![0u8; self.grain_bytes as usize];
        let mut z = flate2::Decompress::new(true);
        match z.decompress(&compressed, &mut out, flate2::FlushDecompress::Finish) {
            Ok(flate2::Status::StreamEnd) => {
                out.truncate(z.total_out() as usize);
                Ok(out)
            }
            Ok(_) | Err(_) => Err(Error::BadCompressedCluster {
                host_offset: host,
                reason: "the grain does not inflate".into(),
            }),
        }
    }

    /// Sets grain table entry `gt_index` of table `gd_index` to `value`, in
    /// the cache and in the file (both directories); appends a missing
    /// table. Called with the allocation lock held.
    fn set_entry(
        &self,
        alloc: &mut Alloc,
        gd_index: u32,
        gt_index: usize,
        value: u32,
    ) -> Result<()> {
        let dirs: &[bool] = if self.rgd.is_some() {
            &[false, true]
        } else {
            &[false]
        };
        for &redundant in dirs {
            let dir = if redundant {
                self.rgd.as_ref().expect("checked")
            } else {
                &self.gd
            };
            let table = match self.table(redundant, gd_index)? {
                Some(t) => t,
                None => {
                    let entries = u64::from(self.header.gtes_per_gt);
                    let sectors = (entries * 4).div_ceil(512);
                    let sector = alloc.next_sector;
                    let sector32 = u32::try_from(sector).map_err(|_| {
                        invalid(
                            FORMAT,
                            "grain table",
                            sector,
                            "the file is too large for its tables",
                        )
                    })?;
                    alloc.next_sector += sectors;
                    self.storage
                        .write_at(&vec![0u8; (sectors * 512) as usize], sector * 512)?;
                    let dir_sector = if redundant {
                        self.header.rgd_offset
                    } else {
                        self.header.gd_offset
                    };
                    let mut entry = [0u8; 4];
                    LittleEndian::write_u32(&mut entry, sector32);
                    self.storage
                        .write_at(&entry, dir_sector * 512 + u64::from(gd_index) * 4)?;
                    dir.write().expect("directory lock poisoned")[gd_index as usize] = sector32;
                    Arc::new(vec![0u32; entries as usize])
                }
            };
            let sector = dir.read().expect("directory lock poisoned")[gd_index as usize];
            let mut entry = [0u8; 4];
            LittleEndian::write_u32(&mut entry, value);
            self.storage
                .write_at(&entry, u64::from(sector) * 512 + gt_index as u64 * 4)?;
            let mut updated = (*table).clone();
            updated[gt_index] = value;
            let mut cache = self.gt_cache.write().expect("cache lock poisoned");
            cache.insert((redundant, gd_index), Arc::new(updated));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Writes `buf` at `offset` of the extent (within one grain).
    /// In a compressed extent the grain's new slot is zero-filled, as
    /// when the image has no backing file ([`SparseExtent::write_compressed_over`]).
    pub fn write_in_grain(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.header.compressed() {
            return self.write_compressed_part(buf, offset, None);
        }
        let host = match self.lookup(offset)?.0 {
            Grain::Data(host) => host,
            _ => {
                let mut alloc = self.alloc.lock().expect("allocation lock poisoned");
                match self.lookup(offset)?.0 {
                    Grain::Data(host) => host,
                    _ => {
                        let (gd_index, gt_index) = self.indexes(offset);
                        if self.is_vmfs_sparse() && self.table(false, gd_index)?.is_none() {
                            // QEMU allocates grains in a VMFS sparse
                            // extent, never its grain tables: it fails such
                            // a write (EINVAL) with the file unchanged.
                            return Err(invalid(
                                FORMAT,
                                "grain table",
                                gd_index.into(),
                                "a VMFS sparse extent's missing grain table is not allocated on write",
                            ));
                        }
                        let sector = alloc.next_sector;
                        let sector32 = u32::try_from(sector).map_err(|_| {
                            invalid(
                                FORMAT,
                                "grain offset",
                                sector,
                                "the file is too large for its tables",
                            )
                        })?;
                        alloc.next_sector += self.header.grain_sectors;
                        let grain_end = alloc.next_sector * 512;
                        crate::formats::grow_to(&*self.storage, grain_end)?;
                        self.set_entry(&mut alloc, gd_index, gt_index, sector32)?;
                        sector * 512 + offset % self.grain_bytes
                    }
                }
            }
        };
        self.storage.write_at(buf, host)
    }

    /// Guest bytes of grain `index` (the last grain may be short).
    fn grain_len(&self, index: u64) -> u64 {
        self.grain_bytes.min(self.len() - index * self.grain_bytes)
    }

    /// Writes `buf` at `offset` of a compressed extent whose image has a
    /// backing file: a new grain's slot is first filled with `slot` (the
    /// parent's bytes of the whole grain, or zeros for a zeroed grain, as
    /// QEMU's get_whole_cluster writes them), whether or not the write is
    /// then refused as partial. `slot` holds one whole grain.
    pub fn write_compressed_over(&self, buf: &[u8], offset: u64, slot: &[u8]) -> Result<()> {
        if slot.len() as u64 != self.grain_bytes {
            return Err(invalid(
                FORMAT,
                "grain slot",
                slot.len() as u64,
                "a grain's slot is filled whole",
            ));
        }
        self.write_compressed_part(buf, offset, Some(slot))
    }

    fn write_compressed_part(&self, buf: &[u8], offset: u64, slot: Option<&[u8]>) -> Result<()> {
        let index = offset / self.grain_bytes;
        self.refuse_written_grain(offset)?;
        // QEMU's vmdk_write_extent takes a whole grain, or the image's
        // short last grain from its start to the end of the image.
        let whole =
            offset.is_multiple_of(self.grain_bytes) && buf.len() as u64 == self.grain_len(index);
        if !whole {
            // QEMU allocates (and zeroes) the grain's slot before it
            // finds the write partial; the slot stays unreferenced.
            let mut alloc = self.alloc.lock().expect("allocation lock poisoned");
            self.refuse_written_grain(offset)?;
            self.allocate_slot(&mut alloc, slot)?;
            return Err(Error::io(
                format!("partial write into compressed grain {index}"),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        self.append_grain(index, buf, slot)
    }

    /// Fails as QEMU does when the grain at `offset` of a compressed
    /// extent was written already (its data or compressed record is in
    /// place): each grain is written once.
    fn refuse_written_grain(&self, offset: u64) -> Result<()> {
        match self.lookup(offset)?.0 {
            Grain::Data(_) | Grain::Compressed(_) => Err(allocated_compressed_grain()),
            _ => Ok(()),
        }
    }

    /// Takes the next grain-sized slot of the file, as QEMU's
    /// get_cluster_offset does for a compressed grain, and fills it with
    /// `slot` (or zeros); returns its sector.
    fn allocate_slot(&self, alloc: &mut Alloc, slot: Option<&[u8]>) -> Result<u64> {
        let sector = alloc.next_sector;
        alloc.next_sector += self.header.grain_sectors;
        match slot {
            // The slot may begin in the tail of the last grain's slot,
            // which holds that grain's parent bytes: written whole.
            Some(data) => self.storage.write_at(data, sector * 512)?,
            // Without a parent every slot is zero-filled, so that tail
            // holds zeros and the rest lies past the file's end (QEMU's
            // next_cluster_sector starts there): growing the file does.
            None => crate::formats::grow_to(&*self.storage, alloc.next_sector * 512)?,
        }
        Ok(sector)
    }

    /// Compresses grain `index` and appends it with its marker into a new
    /// slot filled with `slot` (or zeros).
    fn append_grain(&self, index: u64, data: &[u8], slot: Option<&[u8]>) -> Result<()> {
        let idle = self.compressors.lock().expect("pool lock poisoned").pop();
        let mut compressor = idle.unwrap_or_else(|| Compressor {
            stream: flate2::Compress::new(flate2::Compression::new(6), true),
            record: Vec::new(),
        });
        let result = self.append_with(&mut compressor, index, data, slot);
        let mut pool = self.compressors.lock().expect("pool lock poisoned");
        if pool.len() < MAX_IDLE_COMPRESSORS {
            pool.push(compressor);
        }
        result
    }

    fn append_with(
        &self,
        compressor: &mut Compressor,
        index: u64,
        data: &[u8],
        slot: Option<&[u8]>,
    ) -> Result<()> {
        let record = &mut compressor.record;
        let compressed_len = deflate_into(&mut compressor.stream, data, record)?;
        let used = MARKER_HEADER + compressed_len;
        LittleEndian::write_u64(&mut record[0..8], index * self.header.grain_sectors);
        LittleEndian::write_u32(&mut record[8..12], compressed_len as u32);
        let mut alloc = self.alloc.lock().expect("allocation lock poisoned");
        self.refuse_written_grain(index * self.grain_bytes)?;
        let sector = alloc.next_sector;
        let sector32 = u32::try_from(sector).map_err(|_| {
            invalid(
                FORMAT,
                "grain offset",
                sector,
                "the file is too large for its tables",
            )
        })?;
        self.allocate_slot(&mut alloc, slot)?;
        // The record alone, unpadded, as QEMU writes it: the rest of its
        // last sector keeps the slot's bytes, and a record longer than the
        // slot (incompressible data) ends the file where it ends.
        self.storage.write_at(&record[..used], sector * 512)?;
        // The next grain goes right after this record, inside the slot.
        alloc.next_sector = sector + used.div_ceil(512) as u64;
        let (gd_index, gt_index) = self.indexes(index * self.grain_bytes);
        self.set_entry(&mut alloc, gd_index, gt_index, sector32)
    }

    /// Calls `f` with the extent offset and place of every grain in an
    /// allocated grain table, in order.
    pub fn for_each_grain(&self, mut f: impl FnMut(u64, Grain)) -> Result<()> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        let grains = self.len().div_ceil(self.grain_bytes);
        for gd_index in 0..grains.div_ceil(per_gt) {
            let Some(table) = self.table(false, gd_index as u32)? else {
                continue;
            };
            for (i, _) in table.iter().enumerate() {
                let grain = gd_index * per_gt + i as u64;
                if grain >= grains {
                    break;
                }
                let offset = grain * self.grain_bytes;
                f(offset, self.lookup(offset)?.0);
            }
        }
        Ok(())
    }

    /// Allocated grains and all grains of the extent.
    pub fn grain_counts(&self) -> Result<(u64, u64)> {
        let total = self.len().div_ceil(self.grain_bytes);
        let mut allocated = 0;
        let per_gt = u64::from(self.header.gtes_per_gt);
        let tables = total.div_ceil(per_gt);
        for gd_index in 0..tables {
            if let Some(t) = self.table(false, gd_index as u32)? {
                allocated += t.iter().filter(|&&e| e != 0).count() as u64;
            }
        }
        Ok((allocated, total))
    }
}

/// A write into a compressed grain that is already there: QEMU's vmdk
/// driver reports it on a line of its own and fails the write with EIO.
fn allocated_compressed_grain() -> Error {
    Error::Reported {
        line: "Could not write to allocated cluster for streamOptimized",
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

/// zlib-wrapped deflate of a grain, as QEMU's `compress()` makes it
/// (level 6), into `record` after room for the marker header; returns the
/// compressed length. `stream` is reset first, so it is reused as is.
fn deflate_into(stream: &mut flate2::Compress, data: &[u8], record: &mut Vec<u8>) -> Result<usize> {
    stream.reset();
    // deflate's bound for incompressible input: stored blocks of at most
    // 64 KiB, 5 bytes each, plus the zlib header and checksum.
    let bound = data.len() + data.len() / 8 + 64;
    record.clear();
    record.resize(MARKER_HEADER + bound, 0);
    let status = stream
        .compress(
            data,
            &mut record[MARKER_HEADER..],
            flate2::FlushCompress::Finish,
        )
        .map_err(|e| Error::Unsupported(format!("deflate failed: {e}")))?;
    if status != flate2::Status::StreamEnd || stream.total_in() != data.len() as u64 {
        return Err(Error::Unsupported(format!(
            "deflate did not finish a grain of {} bytes",
            data.len()
        )));
    }
    Ok(stream.total_out() as usize)
}
