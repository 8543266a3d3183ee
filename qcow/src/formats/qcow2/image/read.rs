//! The read side: mapping guest ranges to extents, and reading guest bytes.

use super::meta::{c_hex, Meta};
use super::Qcow2;
use crate::compress;
use crate::device::{check_range, Extent, ExtentKind};
use crate::entries::{alloc_bits, zero_bits, L2Entry, RawL2, SUBCLUSTERS};
use crate::error::{Error, Result};

/// Most guest bytes one call of [`Qcow2::extents`] describes.
const MAX_EXTENTS_SPAN: u64 = 1 << 30;

fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        let contiguous = match (last.kind, e.kind) {
            (
                ExtentKind::Data {
                    host_offset: a,
                    file: fa,
                },
                ExtentKind::Data {
                    host_offset: b,
                    file: fb,
                },
            ) => fa == fb && a + last.len == b,
            (ExtentKind::Zero { host_offset: None }, ExtentKind::Zero { host_offset: None }) => {
                true
            }
            (
                ExtentKind::Zero {
                    host_offset: Some(a),
                },
                ExtentKind::Zero {
                    host_offset: Some(b),
                },
            ) => a + last.len == b,
            (
                ExtentKind::Unallocated { host_offset: None },
                ExtentKind::Unallocated { host_offset: None },
            ) => true,
            (
                ExtentKind::Unallocated {
                    host_offset: Some(a),
                },
                ExtentKind::Unallocated {
                    host_offset: Some(b),
                },
            ) => a + last.len == b,
            _ => false,
        };
        if contiguous && last.guest_offset + last.len == e.guest_offset {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}

impl Qcow2 {
    /// Checks a data cluster offset taken from an L2 entry: an unaligned
    /// one is corruption, in QEMU's words (qcow2_get_host_offset). One
    /// past the end of the file is data that reads as zeros, as QEMU's
    /// file driver reads it (every reader of the file pads a read past its
    /// end with zeros).
    fn check_data_offset(&self, meta: &Meta, guest_cluster: u64, host_offset: u64) -> Result<()> {
        if self.data_file.is_some() || host_offset.is_multiple_of(self.cluster_size()) {
            return Ok(());
        }
        let (l2_offset, l2_index) = self.l2_position(meta, guest_cluster);
        Err(Error::CorruptionFound {
            event: format!(
                "Cluster allocation offset {host_offset:#x} unaligned (L2 offset: \
                 {l2_offset:#x}, L2 index: {})",
                c_hex(l2_index)
            ),
            marked: false,
            during: None,
        })
    }

    /// Where the L2 entry of `guest_cluster` lies, as QEMU's corruption
    /// events name it: its table's offset and its index in the table.
    fn l2_position(&self, meta: &Meta, guest_cluster: u64) -> (u64, u64) {
        let l2_entries = self.geo.l2_entries();
        let l1_index = (guest_cluster / l2_entries) as usize;
        let l2_offset = meta.l2_offset(l1_index).unwrap_or(0);
        (l2_offset, guest_cluster % l2_entries)
    }

    /// QEMU's corruption event for the L2 entry of `guest_cluster`:
    /// `WHAT (L2 offset: 0x..., L2 index: 0x...)`.
    fn l2_corruption(&self, meta: &Meta, guest_cluster: u64, what: &str) -> Error {
        let (l2_offset, l2_index) = self.l2_position(meta, guest_cluster);
        Error::CorruptionFound {
            event: format!(
                "{what} (L2 offset: {l2_offset:#x}, L2 index: {})",
                c_hex(l2_index)
            ),
            marked: false,
            during: None,
        }
    }

    /// Describes the guest range `[offset, offset+len)` of this layer as
    /// extents (merged where contiguous). Describes at most 1 GiB per call.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.extents_into(offset, len, &mut out)?;
        Ok(out)
    }

    /// [`Qcow2::extents`] into `out` (cleared first), for a caller that
    /// maps many ranges and keeps one vector for all of them.
    pub fn extents_into(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        out.clear();
        let size = self.size();
        let len = len.min(size.saturating_sub(offset)).min(MAX_EXTENTS_SPAN);
        if len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let mut meta = self.lock();
        let mut pos = offset;
        let end = offset + len;
        let table_span = cs * self.geo.l2_entries();
        while pos < end {
            let guest_cluster = pos / cs;
            // A range no L2 table maps is unallocated as a whole, without
            // a look at each of its clusters.
            let l2_offset = meta
                .l2_offset((pos / table_span) as usize)
                .map_err(|e| self.signal_corruption(e))?;
            if l2_offset == 0 {
                let chunk = ((pos / table_span + 1) * table_span).min(end) - pos;
                push_extent(
                    out,
                    Extent {
                        guest_offset: pos,
                        len: chunk,
                        kind: ExtentKind::Unallocated { host_offset: None },
                    },
                );
                pos += chunk;
                continue;
            }
            let in_cluster = pos % cs;
            let chunk = (cs - in_cluster).min(end - pos);
            // Corruption found here is signalled as QEMU signals it (an
            // image open for writing gets the corrupt bit).
            let raw = meta
                .l2_entry(&*self.file, guest_cluster)
                .map_err(|e| self.signal_corruption(e))?;
            self.describe_cluster(&meta, guest_cluster, raw, in_cluster, chunk, out)
                .map_err(|e| self.signal_corruption(e))?;
            pos += chunk;
        }
        Ok(())
    }

    fn describe_cluster(
        &self,
        meta: &Meta,
        guest_cluster: u64,
        raw: RawL2,
        in_cluster: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let guest_offset = guest_cluster * cs + in_cluster;
        let file = self.data_file_index();
        let in_data_file = !file.is_image();
        let entry = self.geo.decode_l2(raw.entry);
        if let L2Entry::Compressed {
            host_offset,
            compressed_len,
        } = entry
        {
            if in_data_file {
                return Err(self.l2_corruption(
                    meta,
                    guest_cluster,
                    "Compressed cluster entry found in image with external data file",
                ));
            }
            // Compressed data past the end of the file is read as zeros,
            // which do not decompress: the read fails, as QEMU's does.
            push_extent(
                out,
                Extent {
                    guest_offset,
                    len,
                    kind: ExtentKind::Compressed {
                        host_offset,
                        compressed_len,
                    },
                },
            );
            return Ok(());
        }
        if !self.geo.extended_l2
            && self.geo.version < 3
            && raw.entry & crate::entries::FLAG_ZERO != 0
        {
            // Version 2 has no zero flag: QEMU treats the bit as corruption
            // and refuses to read the cluster.
            return Err(self.l2_corruption(
                meta,
                guest_cluster,
                "Zero cluster entry found in pre-v3 image",
            ));
        }
        if !self.geo.extended_l2 {
            let kind = match entry {
                L2Entry::Unallocated => ExtentKind::Unallocated { host_offset: None },
                L2Entry::Zero { host_offset, .. } => ExtentKind::Zero {
                    host_offset: (host_offset != 0).then_some(host_offset + in_cluster),
                },
                L2Entry::Normal { host_offset, .. } => {
                    self.check_data_offset(meta, guest_cluster, host_offset)?;
                    ExtentKind::Data {
                        host_offset: host_offset + in_cluster,
                        file,
                    }
                }
                L2Entry::Compressed { .. } => unreachable!("handled above"),
            };
            push_extent(
                out,
                Extent {
                    guest_offset,
                    len,
                    kind,
                },
            );
            return Ok(());
        }
        // Extended L2: each subcluster has its own state.
        let host_offset = match entry {
            L2Entry::Normal { host_offset, .. } | L2Entry::Zero { host_offset, .. } => host_offset,
            _ => 0,
        };
        let alloc = alloc_bits(raw.bitmap);
        let zero = zero_bits(raw.bitmap);
        if alloc & zero != 0 {
            // QEMU's QCOW2_SUBCLUSTER_INVALID (its message has two spaces).
            return Err(self.l2_corruption(meta, guest_cluster, "Invalid cluster entry found "));
        }
        if alloc != 0 {
            if host_offset == 0 && !(in_data_file && raw.entry & crate::entries::FLAG_COPIED != 0) {
                return Err(self.l2_corruption(
                    meta,
                    guest_cluster,
                    "Invalid cluster entry found ",
                ));
            }
            self.check_data_offset(meta, guest_cluster, host_offset)?;
        }
        let sc = self.geo.subcluster_size();
        let mut pos = in_cluster;
        let end = in_cluster + len;
        while pos < end {
            let index = (pos / sc) as u32;
            debug_assert!(index < SUBCLUSTERS);
            let sc_end = (u64::from(index) + 1) * sc;
            let chunk = sc_end.min(end) - pos;
            let kind = if alloc & (1 << index) != 0 {
                ExtentKind::Data {
                    host_offset: host_offset + pos,
                    file,
                }
            } else if zero & (1 << index) != 0 {
                // A zero subcluster of an allocated cluster keeps its host
                // range (QEMU's QCOW2_SUBCLUSTER_ZERO_ALLOC): map shows it.
                ExtentKind::Zero {
                    host_offset: (host_offset != 0).then_some(host_offset + pos),
                }
            } else {
                ExtentKind::Unallocated {
                    host_offset: (host_offset != 0).then_some(host_offset + pos),
                }
            };
            push_extent(
                out,
                Extent {
                    guest_offset: guest_cluster * self.cluster_size() + pos,
                    len: chunk,
                    kind,
                },
            );
            pos += chunk;
        }
        Ok(())
    }

    /// Decompresses the cluster at `host_offset` (cached: the last one).
    pub(crate) fn with_decompressed<R>(
        &self,
        host_offset: u64,
        compressed_len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let mut cache = self.decompressed.lock().expect("lock poisoned");
        if let Some((off, data)) = cache.as_ref() {
            if *off == host_offset {
                return Ok(f(data));
            }
        }
        let cs = self.cluster_size() as usize;
        // The sector count field cannot describe more than two clusters.
        let clen = (compressed_len as usize).min(2 * cs + 512);
        let mut input = vec![0u8; clen];
        self.file.read_at(&mut input, host_offset)?;
        let mut out = vec![0u8; cs];
        compress::decompress(self.compression, &input, &mut out, host_offset)?;
        let r = f(&out);
        *cache = Some((host_offset, out));
        Ok(r)
    }

    /// Reads guest bytes of one extent (any kind) into `buf`.
    pub fn read_extent(&self, e: &Extent, buf: &mut [u8]) -> Result<()> {
        debug_assert_eq!(buf.len() as u64, e.len);
        match e.kind {
            ExtentKind::Data { host_offset, file } => {
                let storage = self.file_storage(file).ok_or(Error::InvalidEntry {
                    what: "extent file",
                    index: u64::from(file.0),
                    offset: host_offset,
                    reason: "the image has no such file",
                })?;
                storage.read_at(buf, host_offset)?;
                if let Some(cipher) = self.cipher()? {
                    cipher.decrypt(buf, e.guest_offset, host_offset);
                }
                Ok(())
            }
            ExtentKind::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            ExtentKind::Unallocated { .. } => self.read_backing(buf, e.guest_offset),
            ExtentKind::Compressed {
                host_offset,
                compressed_len,
            } => {
                let start = (e.guest_offset % self.cluster_size()) as usize;
                self.with_decompressed(host_offset, compressed_len, |data| {
                    buf.copy_from_slice(&data[start..start + buf.len()]);
                })
            }
        }
    }

    /// Reads what the backing file shows at `offset` (zero past its end or
    /// without one).
    pub fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            Some(b) => {
                let bsize = b.virtual_size();
                if offset >= bsize {
                    buf.fill(0);
                    return Ok(());
                }
                let n = ((bsize - offset) as usize).min(buf.len());
                b.read_at(&mut buf[..n], offset)?;
                buf[n..].fill(0);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Reads guest bytes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if self.cipher()?.is_some() && !sector_aligned(offset, buf.len() as u64) {
            // Encrypted data comes in whole sectors: read those around.
            let (start, end) = sector_span(offset, buf.len() as u64);
            let mut whole = vec![0u8; (end - start) as usize];
            self.read_at(&mut whole, start)?;
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&whole[skip..skip + buf.len()]);
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let extents = self.extents(pos, (buf.len() - done) as u64)?;
            if extents.is_empty() {
                return Err(Error::OutOfRange {
                    offset: pos,
                    len: (buf.len() - done) as u64,
                    size: self.size(),
                });
            }
            for e in &extents {
                let start = (e.guest_offset - offset) as usize;
                self.read_extent(e, &mut buf[start..start + e.len as usize])?;
                done = start + e.len as usize;
            }
        }
        Ok(())
    }
}

/// Whether a byte range covers whole encryption sectors.
pub(super) fn sector_aligned(offset: u64, len: u64) -> bool {
    let s = crate::crypto::SECTOR_SIZE as u64;
    offset.is_multiple_of(s) && len.is_multiple_of(s)
}

/// The whole encryption sectors around a byte range.
pub(super) fn sector_span(offset: u64, len: u64) -> (u64, u64) {
    let s = crate::crypto::SECTOR_SIZE as u64;
    (offset / s * s, (offset + len).div_ceil(s) * s)
}
