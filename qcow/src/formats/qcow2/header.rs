//! The qcow2 header: the fixed fields at the start of the file.
//!
//! [`Header::parse`] validates every field against the specification, the
//! file length and this crate's resource bounds, so that the rest of the
//! library can trust a `Header`. Header extensions live in
//! [`crate::extensions`]; [`crate::extensions::HeaderCluster`] ties both together
//! with the backing file name.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};

/// "QFI\xfb".
pub const QCOW_MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header this crate writes (with compression_type
/// and padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest valid version 3 header length.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Smallest cluster size (512 bytes).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size (2 MiB), QEMU's implementation limit.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table accepted, in bytes (QEMU's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (QEMU's limit).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Most snapshots accepted.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table accepted, in bytes.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Longest backing file name accepted.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature: refcounts may be stale (lazy refcounts).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: the image is corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: compression_type is not deflate.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible feature this crate understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature: bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear feature: the external data file is a consistent raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Autoclear bits this crate maintains (all others are cleared on write).
pub const AUTOCLEAR_KNOWN: u64 = AUTOCLEAR_DATA_FILE_RAW;

/// The algorithm of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (QEMU calls it "zlib").
    Zlib,
    /// A zstd frame.
    Zstd,
}

impl CompressionType {
    /// The name QEMU uses.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// The validated fixed part of a qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 if none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Encryption method: 0 none, 1 legacy AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters occupied by the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the header structure (72 for version 2).
    pub header_length: u32,
    /// Compression type field (v3 with header_length > 104).
    pub compression_type: CompressionType,
    /// Bytes of unknown additional fields after offset 105, preserved on
    /// rewrite.
    pub extra_fields: Vec<u8>,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Whether L2 entries are 128-bit extended entries.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Whether guest data lives in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }

    /// Whether the external data file is a consistent raw image.
    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }

    /// Whether lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Whether the dirty bit is set.
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Whether the corrupt bit is set.
    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Parses and validates the fixed header from the first bytes of the file
    /// (`buf` holds at least the header; `file_len` is the file's length).
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        Self::parse_with(buf, file_len, false)
    }

    /// [`Header::parse`] as QEMU opens an image for `check` (its
    /// BDRV_O_CHECK): a refcount table of no clusters is accepted, since
    /// the check reports every cluster as unreferenced and can rebuild.
    pub fn parse_for_check(buf: &[u8], file_len: u64) -> Result<Header> {
        Self::parse_with(buf, file_len, true)
    }

    fn parse_with(buf: &[u8], file_len: u64, allow_empty_refcount_table: bool) -> Result<Header> {
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(Error::TooShort { len: file_len });
        }
        let magic = BigEndian::read_u32(&buf[0..4]);
        if magic != QCOW_MAGIC {
            return Err(Error::BadMagic { magic });
        }
        let version = BigEndian::read_u32(&buf[4..8]);
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion { version });
        }
        let cluster_bits = BigEndian::read_u32(&buf[20..24]);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::InvalidField {
                field: "cluster_bits",
                value: cluster_bits.into(),
                reason: "must be between 9 (512 B) and 21 (2 MiB)",
            });
        }
        let cluster_size = 1u64 << cluster_bits;
        let crypt_method = BigEndian::read_u32(&buf[32..36]);
        let mut h = Header {
            version,
            backing_file_offset: BigEndian::read_u64(&buf[8..16]),
            backing_file_size: BigEndian::read_u32(&buf[16..20]),
            cluster_bits,
            size: BigEndian::read_u64(&buf[24..32]),
            crypt_method,
            l1_size: BigEndian::read_u32(&buf[36..40]),
            l1_table_offset: BigEndian::read_u64(&buf[40..48]),
            refcount_table_offset: BigEndian::read_u64(&buf[48..56]),
            refcount_table_clusters: BigEndian::read_u32(&buf[56..60]),
            nb_snapshots: BigEndian::read_u32(&buf[60..64]),
            snapshots_offset: BigEndian::read_u64(&buf[64..72]),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: CompressionType::Zlib,
            extra_fields: Vec::new(),
        };
        if version == 3 {
            if buf.len() < V3_MIN_HEADER_LEN as usize {
                return Err(Error::TooShort { len: file_len });
            }
            h.incompatible_features = BigEndian::read_u64(&buf[72..80]);
            h.compatible_features = BigEndian::read_u64(&buf[80..88]);
            h.autoclear_features = BigEndian::read_u64(&buf[88..96]);
            h.refcount_order = BigEndian::read_u32(&buf[96..100]);
            h.header_length = BigEndian::read_u32(&buf[100..104]);
            if h.header_length < V3_MIN_HEADER_LEN {
                return Err(Error::InvalidField {
                    field: "header_length",
                    value: h.header_length.into(),
                    reason: "must be at least 104 for version 3",
                });
            }
            if !h.header_length.is_multiple_of(8) {
                return Err(Error::InvalidField {
                    field: "header_length",
                    value: h.header_length.into(),
                    reason: "must be a multiple of 8",
                });
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(Error::InvalidField {
                    field: "header_length",
                    value: h.header_length.into(),
                    reason: "larger than a cluster",
                });
            }
            if buf.len() < h.header_length as usize {
                return Err(Error::TooShort { len: file_len });
            }
            if h.header_length > V3_MIN_HEADER_LEN {
                h.compression_type = match buf[104] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    other => {
                        return Err(Error::InvalidField {
                            field: "compression_type",
                            value: other.into(),
                            reason: "unknown compression type",
                        })
                    }
                };
                h.extra_fields = buf[105..h.header_length as usize].to_vec();
            }
        }
        h.validate_with(file_len, allow_empty_refcount_table)?;
        Ok(h)
    }

    /// Checks the cross-field rules of the specification and the resource
    /// bounds of this crate.
    pub fn validate(&self, file_len: u64) -> Result<()> {
        self.validate_with(file_len, false)
    }

    fn validate_with(&self, file_len: u64, allow_empty_refcount_table: bool) -> Result<()> {
        let cluster_size = self.cluster_size();
        if self.crypt_method > crate::crypto::CRYPT_LUKS {
            return Err(Error::EncryptionNotSupported {
                method: self.crypt_method,
            });
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::UnknownIncompatibleFeatures {
                bits: unknown,
                names: Vec::new(),
            });
        }
        if self.refcount_order > 6 {
            return Err(Error::InvalidField {
                field: "refcount_order",
                value: self.refcount_order.into(),
                reason: "must be at most 6 (64-bit refcounts)",
            });
        }
        if self.version == 2 && self.refcount_order != 4 {
            return Err(Error::InvalidField {
                field: "refcount_order",
                value: self.refcount_order.into(),
                reason: "version 2 images have 16-bit refcounts",
            });
        }
        let compression_bit = self.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if compression_bit != (self.compression_type != CompressionType::Zlib) {
            return Err(Error::InvalidField {
                field: "compression_type",
                value: (self.compression_type == CompressionType::Zstd).into(),
                reason: "does not agree with the compression type feature bit",
            });
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return Err(Error::InvalidField {
                field: "cluster_bits",
                value: self.cluster_bits.into(),
                reason: "extended L2 entries need clusters of at least 16 KiB",
            });
        }
        if self.data_file_raw() && !self.has_data_file() {
            return Err(Error::InvalidField {
                field: "autoclear_features",
                value: self.autoclear_features,
                reason: "data_file_raw is set without an external data file",
            });
        }
        // Backing file name: inside the first cluster, at most 1023 bytes.
        if self.backing_file_offset != 0 {
            if self.backing_file_size > MAX_BACKING_NAME {
                return Err(Error::InvalidField {
                    field: "backing_file_size",
                    value: self.backing_file_size.into(),
                    reason: "backing file name longer than 1023 bytes",
                });
            }
            let end = self
                .backing_file_offset
                .checked_add(self.backing_file_size.into());
            if end.is_none_or(|e| e > cluster_size) {
                return Err(Error::InvalidField {
                    field: "backing_file_offset",
                    value: self.backing_file_offset,
                    reason: "backing file name does not lie within the first cluster",
                });
            }
        }
        // L1 table.
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::InvalidTable {
                table: "L1 table",
                offset: self.l1_table_offset,
                entries: self.l1_size.into(),
                reason: "larger than 32 MiB",
            });
        }
        let needed = l1_entries_for(self.size, self.cluster_bits, self.extended_l2());
        if needed > i32::MAX as u64 {
            return Err(Error::HeaderRefused {
                field: "size",
                value: self.size,
                message: "Image is too big",
            });
        }
        if u64::from(self.l1_size) < needed {
            return Err(Error::HeaderRefused {
                field: "l1_size",
                value: self.l1_size.into(),
                message: "L1 table is too small",
            });
        }
        check_table(
            "L1 table",
            self.l1_table_offset,
            self.l1_size.into(),
            l1_bytes,
            cluster_size,
            file_len,
        )?;
        // Refcount table.
        let rt_bytes = u64::from(self.refcount_table_clusters) * cluster_size;
        if rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            // QEMU's qcow2_validate_table, which a table grown to its
            // limit (refcount::MAX_GROWN_TABLE_ENTRIES) fails.
            return Err(Error::HeaderRefused {
                field: "refcount_table_clusters",
                value: self.refcount_table_clusters.into(),
                message: "Reference count table too large",
            });
        }
        if self.refcount_table_clusters == 0 {
            // QEMU opens such an image only for `check`, which rebuilds
            // the refcounts ([`Header::parse_for_check`]).
            if !allow_empty_refcount_table {
                return Err(Error::HeaderRefused {
                    field: "refcount_table_clusters",
                    value: 0,
                    message: "Image does not contain a reference count table",
                });
            }
        } else {
            check_table(
                "refcount table",
                self.refcount_table_offset,
                rt_bytes / 8,
                rt_bytes,
                cluster_size,
                file_len,
            )?;
        }
        // Snapshot table: at least 40 bytes an entry.
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::HeaderRefused {
                field: "nb_snapshots",
                value: self.nb_snapshots.into(),
                message: "Snapshot table too large",
            });
        }
        // QEMU checks the table's alignment and that its end fits in 63
        // bits, not the file's length: entries past the end read as zero
        // (qemu-iotests 080 creates a snapshot in such an image and expects
        // EFBIG, 65536 snapshots being the most).
        if self.nb_snapshots > 0 {
            check_table(
                "snapshot table",
                self.snapshots_offset,
                self.nb_snapshots.into(),
                u64::from(self.nb_snapshots) * 40,
                cluster_size,
                i64::MAX as u64,
            )?;
        }
        Ok(())
    }

    /// Serialises the fixed header (`header_length` bytes) into `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        BigEndian::write_u32(&mut buf[0..4], QCOW_MAGIC);
        BigEndian::write_u32(&mut buf[4..8], self.version);
        BigEndian::write_u64(&mut buf[8..16], self.backing_file_offset);
        BigEndian::write_u32(&mut buf[16..20], self.backing_file_size);
        BigEndian::write_u32(&mut buf[20..24], self.cluster_bits);
        BigEndian::write_u64(&mut buf[24..32], self.size);
        BigEndian::write_u32(&mut buf[32..36], self.crypt_method);
        BigEndian::write_u32(&mut buf[36..40], self.l1_size);
        BigEndian::write_u64(&mut buf[40..48], self.l1_table_offset);
        BigEndian::write_u64(&mut buf[48..56], self.refcount_table_offset);
        BigEndian::write_u32(&mut buf[56..60], self.refcount_table_clusters);
        BigEndian::write_u32(&mut buf[60..64], self.nb_snapshots);
        BigEndian::write_u64(&mut buf[64..72], self.snapshots_offset);
        if self.version >= 3 {
            BigEndian::write_u64(&mut buf[72..80], self.incompatible_features);
            BigEndian::write_u64(&mut buf[80..88], self.compatible_features);
            BigEndian::write_u64(&mut buf[88..96], self.autoclear_features);
            BigEndian::write_u32(&mut buf[96..100], self.refcount_order);
            BigEndian::write_u32(&mut buf[100..104], self.header_length);
            if self.header_length > V3_MIN_HEADER_LEN {
                buf[104] = match self.compression_type {
                    CompressionType::Zlib => 0,
                    CompressionType::Zstd => 1,
                };
                let end = self.header_length as usize;
                let extra = &mut buf[105..end];
                extra.fill(0);
                let n = self.extra_fields.len().min(extra.len());
                extra[..n].copy_from_slice(&self.extra_fields[..n]);
            }
        }
    }
}

/// Number of L1 entries needed to map `size` bytes.
pub fn l1_entries_for(size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let entry_bits = if extended_l2 { 4 } else { 3 };
    let l2_bits = cluster_bits - entry_bits;
    let shift = cluster_bits + l2_bits;
    size.div_ceil(1u64 << shift)
        .max(if size == 0 { 0 } else { 1 })
}

fn check_table(
    table: &'static str,
    offset: u64,
    entries: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    if entries == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(Error::InvalidTable {
            table,
            offset,
            entries,
            reason: "offset is not aligned to a cluster",
        });
    }
    if offset == 0 {
        return Err(Error::InvalidTable {
            table,
            offset,
            entries,
            reason: "overlaps the header",
        });
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::InvalidTable {
            table,
            offset,
            entries,
            reason: "extends beyond the end of the file",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: CompressionType::Zlib,
            extra_fields: vec![0; 7],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let mut buf = vec![0u8; 512];
        h.write(&mut buf);
        assert_eq!(Header::parse(&buf, 0x40000).unwrap(), h);
    }

    #[test]
    fn an_empty_refcount_table_opens_only_for_check() {
        let mut h = sample();
        h.refcount_table_clusters = 0;
        let mut buf = vec![0u8; 512];
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert_eq!(e, "Image does not contain a reference count table");
        assert_eq!(Header::parse_for_check(&buf, 0x40000).unwrap(), h);
    }

    #[test]
    fn refuses_bad_fields() {
        let mut buf = vec![0u8; 512];
        let mut h = sample();
        h.cluster_bits = 8;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("cluster_bits: 8"), "{e}");

        let mut h = sample();
        h.incompatible_features = 1 << 9;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("incompatible feature bits 0x200"), "{e}");

        let mut h = sample();
        h.l1_size = 1 << 31;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("L1 table"), "{e}");

        let mut h = sample();
        h.l1_table_offset = 0x30001;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("aligned"), "{e}");

        let mut h = sample();
        h.refcount_table_offset = 0x80000;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("beyond the end"), "{e}");

        let mut h = sample();
        h.version = 4;
        h.write(&mut buf);
        let e = Header::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("version 4"), "{e}");
    }

    #[test]
    fn l1_entries() {
        // 64 KiB clusters: one L2 table maps 512 MiB.
        assert_eq!(l1_entries_for(1 << 30, 16, false), 2);
        assert_eq!(l1_entries_for((1 << 29) + 1, 16, false), 2);
        assert_eq!(l1_entries_for(1 << 29, 16, true), 2);
        assert_eq!(l1_entries_for(0, 16, false), 0);
    }
}
