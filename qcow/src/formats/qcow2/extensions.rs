//! Header extensions and the backing file name: everything in the first
//! cluster after the fixed header.
//!
//! [`HeaderCluster`] is the validated first cluster as a whole. Unknown
//! extensions are kept byte for byte and written back when the header is
//! rewritten.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};
use crate::header::{Header, INCOMPAT_KNOWN};

/// End of the extension area.
pub const EXT_END: u32 = 0;
/// Backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// External data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Longest string extension we accept (backing format, data file name).
pub const MAX_STRING_EXTENSION: usize = 4096;

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number within that bitmap.
    pub bit: u8,
    /// The feature's name.
    pub name: String,
}

/// A header extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// The backing file's format ("qcow2", "raw").
    BackingFormat(String),
    /// Names of feature bits.
    FeatureNames(Vec<FeatureName>),
    /// The external data file's name.
    DataFile(String),
    /// Any other extension (bitmaps included), preserved verbatim.
    Other {
        /// The extension type.
        ext_type: u32,
        /// Its data, unpadded.
        data: Vec<u8>,
    },
}

impl Extension {
    /// The extension's type code.
    pub fn ext_type(&self) -> u32 {
        match self {
            Extension::BackingFormat(_) => EXT_BACKING_FORMAT,
            Extension::FeatureNames(_) => EXT_FEATURE_TABLE,
            Extension::DataFile(_) => EXT_DATA_FILE,
            Extension::Other { ext_type, .. } => *ext_type,
        }
    }

    fn data(&self) -> Vec<u8> {
        match self {
            Extension::BackingFormat(s) | Extension::DataFile(s) => s.as_bytes().to_vec(),
            Extension::FeatureNames(names) => {
                let mut out = vec![0u8; names.len() * 48];
                for (i, f) in names.iter().enumerate() {
                    let e = &mut out[i * 48..(i + 1) * 48];
                    e[0] = f.kind;
                    e[1] = f.bit;
                    let n = f.name.len().min(46);
                    e[2..2 + n].copy_from_slice(&f.name.as_bytes()[..n]);
                }
                out
            }
            Extension::Other { data, .. } => data.clone(),
        }
    }
}

/// The feature name table QEMU writes into new version 3 images.
pub fn default_feature_names() -> Vec<FeatureName> {
    let f = |kind, bit, name: &str| FeatureName {
        kind,
        bit,
        name: name.to_string(),
    };
    vec![
        f(0, 0, "dirty bit"),
        f(0, 1, "corrupt bit"),
        f(0, 2, "external data file"),
        f(0, 3, "compression type"),
        f(0, 4, "extended L2 entries"),
        f(1, 0, "lazy refcounts"),
        f(2, 0, "bitmaps"),
        f(2, 1, "raw external data"),
    ]
}

/// The validated first cluster: header, extensions and backing file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCluster {
    /// The fixed header.
    pub header: Header,
    /// Extensions in file order.
    pub extensions: Vec<Extension>,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
}

impl HeaderCluster {
    /// Parses the first cluster (`buf` holds the first
    /// min(cluster size, file length) bytes; more is fine).
    pub fn parse(buf: &[u8], file_len: u64) -> Result<HeaderCluster> {
        Self::parse_with(buf, file_len, Header::parse)
    }

    /// [`HeaderCluster::parse`] for `check`, which accepts an empty
    /// refcount table ([`Header::parse_for_check`]).
    pub fn parse_for_check(buf: &[u8], file_len: u64) -> Result<HeaderCluster> {
        Self::parse_with(buf, file_len, Header::parse_for_check)
    }

    fn parse_with(
        buf: &[u8],
        file_len: u64,
        parse_header: fn(&[u8], u64) -> Result<Header>,
    ) -> Result<HeaderCluster> {
        let mut header = match parse_header(buf, file_len) {
            Err(Error::UnknownIncompatibleFeatures { bits, .. }) => {
                // Name the unknown bits from the feature table if we can.
                let names = unknown_feature_names(buf, bits);
                return Err(Error::UnknownIncompatibleFeatures { bits, names });
            }
            other => other?,
        };
        let cluster_size = header.cluster_size() as usize;
        let area_end = if header.backing_file_offset != 0 {
            header.backing_file_offset as usize
        } else {
            cluster_size
        }
        .min(buf.len());
        let extensions = parse_extensions(buf, header.header_length as usize, area_end)?;
        let backing_file = if header.backing_file_offset != 0 {
            let start = header.backing_file_offset as usize;
            let end = start + header.backing_file_size as usize;
            if end > buf.len() {
                return Err(Error::InvalidField {
                    field: "backing_file_offset",
                    value: header.backing_file_offset,
                    reason: "backing file name extends beyond the end of the file",
                });
            }
            let name =
                String::from_utf8(buf[start..end].to_vec()).map_err(|_| Error::InvalidField {
                    field: "backing_file_size",
                    value: header.backing_file_size.into(),
                    reason: "backing file name is not valid UTF-8",
                })?;
            if name.is_empty() {
                None
            } else {
                Some(name)
            }
        } else {
            None
        };
        if backing_file.is_none() {
            header.backing_file_offset = 0;
            header.backing_file_size = 0;
        }
        Ok(HeaderCluster {
            header,
            extensions,
            backing_file,
        })
    }

    /// The backing file format extension, if present.
    pub fn backing_format(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| match e {
            Extension::BackingFormat(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The external data file name extension, if present.
    pub fn data_file(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| match e {
            Extension::DataFile(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The full disk encryption header pointer (offset, length), if the
    /// extension is present; its size must be QEMU's 16 bytes.
    pub fn crypto_header(&self) -> Result<Option<(u64, u64)>> {
        let Some(data) = self.extensions.iter().find_map(|e| match e {
            Extension::Other { ext_type, data } if *ext_type == EXT_CRYPTO => Some(data),
            _ => None,
        }) else {
            return Ok(None);
        };
        if data.len() != 16 {
            return Err(Error::CryptoHeaderExtension {
                value: data.len() as u64,
                reason: format!(
                    "CRYPTO header extension size {}, but expected size 16",
                    data.len()
                ),
            });
        }
        Ok(Some((
            BigEndian::read_u64(&data[..8]),
            BigEndian::read_u64(&data[8..]),
        )))
    }

    /// Whether a bitmaps extension is present.
    pub fn has_bitmaps(&self) -> bool {
        self.extensions
            .iter()
            .any(|e| matches!(e, Extension::Other { ext_type, .. } if *ext_type == EXT_BITMAPS))
    }

    /// Sets or removes a string extension of the given type.
    pub fn set_string_extension(&mut self, ext_type: u32, value: Option<&str>) {
        self.extensions.retain(|e| e.ext_type() != ext_type);
        if let Some(v) = value {
            let ext = match ext_type {
                EXT_BACKING_FORMAT => Extension::BackingFormat(v.to_string()),
                EXT_DATA_FILE => Extension::DataFile(v.to_string()),
                _ => Extension::Other {
                    ext_type,
                    data: v.as_bytes().to_vec(),
                },
            };
            // Keep the backing format first, as QEMU does.
            if ext_type == EXT_BACKING_FORMAT {
                self.extensions.insert(0, ext);
            } else {
                self.extensions.push(ext);
            }
        }
    }

    /// Serialises header, extensions and backing name into a buffer of one
    /// cluster, updating `backing_file_offset`/`backing_file_size`.
    pub fn write(&mut self) -> Result<Vec<u8>> {
        let cluster_size = self.header.cluster_size() as usize;
        let mut buf = vec![0u8; cluster_size];
        let mut pos = self.header.header_length as usize;
        if self.header.version >= 3 {
            for ext in &self.extensions {
                let data = ext.data();
                let padded = data.len().div_ceil(8) * 8;
                if pos + 8 + padded + 8 > cluster_size {
                    return Err(Error::NoSpace(
                        "header extensions do not fit into a cluster",
                    ));
                }
                BigEndian::write_u32(&mut buf[pos..pos + 4], ext.ext_type());
                BigEndian::write_u32(&mut buf[pos + 4..pos + 8], data.len() as u32);
                buf[pos + 8..pos + 8 + data.len()].copy_from_slice(&data);
                pos += 8 + padded;
            }
        } else {
            // Version 2 knows only the backing format extension.
            if let Some(fmt) = self.backing_format().map(str::to_owned) {
                let padded = fmt.len().div_ceil(8) * 8;
                if pos + 16 + padded > cluster_size {
                    return Err(Error::NoSpace(
                        "header extensions do not fit into a cluster",
                    ));
                }
                BigEndian::write_u32(&mut buf[pos..pos + 4], EXT_BACKING_FORMAT);
                BigEndian::write_u32(&mut buf[pos + 4..pos + 8], fmt.len() as u32);
                buf[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
                pos += 8 + padded;
            }
        }
        // End marker.
        pos += 8;
        match &self.backing_file {
            Some(name) => {
                if name.len() > crate::header::MAX_BACKING_NAME as usize {
                    return Err(Error::InvalidOption {
                        option: "backing_file",
                        value: name.clone(),
                        reason: "name longer than 1023 bytes",
                    });
                }
                if pos + name.len() > cluster_size {
                    return Err(Error::NoSpace(
                        "backing file name does not fit into the header cluster",
                    ));
                }
                buf[pos..pos + name.len()].copy_from_slice(name.as_bytes());
                self.header.backing_file_offset = pos as u64;
                self.header.backing_file_size = name.len() as u32;
            }
            None => {
                self.header.backing_file_offset = 0;
                self.header.backing_file_size = 0;
            }
        }
        self.header.write(&mut buf);
        Ok(buf)
    }
}

fn parse_extensions(buf: &[u8], start: usize, area_end: usize) -> Result<Vec<Extension>> {
    let mut out = Vec::new();
    let mut pos = start;
    let mut seen = std::collections::HashSet::new();
    while pos + 8 <= area_end {
        let ext_type = BigEndian::read_u32(&buf[pos..pos + 4]);
        let len = BigEndian::read_u32(&buf[pos + 4..pos + 8]) as usize;
        if ext_type == EXT_END {
            break;
        }
        let data_start = pos + 8;
        let bad = |reason| Error::InvalidExtension {
            ext_type,
            offset: pos as u64,
            reason,
        };
        if len > area_end - data_start {
            return Err(bad("length extends beyond the header cluster"));
        }
        let data = &buf[data_start..data_start + len];
        if ext_type != EXT_FEATURE_TABLE && !seen.insert(ext_type) && ext_type != 0 {
            // Duplicates of unknown types are preserved; known ones are not
            // allowed twice.
            if matches!(
                ext_type,
                EXT_BACKING_FORMAT | EXT_DATA_FILE | EXT_BITMAPS | EXT_CRYPTO
            ) {
                return Err(bad("appears more than once"));
            }
        }
        let ext = match ext_type {
            EXT_BACKING_FORMAT | EXT_DATA_FILE => {
                if len > MAX_STRING_EXTENSION {
                    return Err(bad("string too long"));
                }
                // QEMU treats the string as ending at the first NUL.
                let end = data.iter().position(|&b| b == 0).unwrap_or(len);
                let s = String::from_utf8(data[..end].to_vec())
                    .map_err(|_| bad("string is not valid UTF-8"))?;
                if ext_type == EXT_BACKING_FORMAT {
                    Extension::BackingFormat(s)
                } else {
                    Extension::DataFile(s)
                }
            }
            EXT_FEATURE_TABLE => {
                let names = data
                    .chunks_exact(48)
                    .map(|e| {
                        let name_end = e[2..].iter().position(|&b| b == 0).unwrap_or(46);
                        FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name: String::from_utf8_lossy(&e[2..2 + name_end]).into_owned(),
                        }
                    })
                    .collect();
                Extension::FeatureNames(names)
            }
            _ => Extension::Other {
                ext_type,
                data: data.to_vec(),
            },
        };
        out.push(ext);
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok(out)
}

/// Best-effort names for unknown incompatible bits, read from the feature
/// table of an image whose header failed validation only for those bits.
fn unknown_feature_names(buf: &[u8], bits: u64) -> Vec<String> {
    if buf.len() < 104 {
        return Vec::new();
    }
    let header_length = BigEndian::read_u32(&buf[100..104]) as usize;
    let exts = match parse_extensions(buf, header_length.min(buf.len()), buf.len()) {
        Ok(e) => e,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for e in exts {
        if let Extension::FeatureNames(names) = e {
            for f in names {
                if f.kind == 0
                    && f.bit < 64
                    && bits & (1 << f.bit) != 0
                    && (1u64 << f.bit) & INCOMPAT_KNOWN == 0
                {
                    out.push(f.name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{CompressionType, V3_HEADER_LEN};

    fn cluster() -> HeaderCluster {
        HeaderCluster {
            header: Header {
                version: 3,
                backing_file_offset: 0,
                backing_file_size: 0,
                cluster_bits: 16,
                size: 1 << 20,
                crypt_method: 0,
                l1_size: 1,
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
            },
            extensions: vec![
                Extension::BackingFormat("raw".into()),
                Extension::FeatureNames(default_feature_names()),
                Extension::Other {
                    ext_type: 0x1234_5678,
                    data: vec![1, 2, 3],
                },
            ],
            backing_file: Some("base.img".into()),
        }
    }

    #[test]
    fn round_trip_preserves_unknown_extensions() {
        let mut hc = cluster();
        let buf = hc.write().unwrap();
        let parsed = HeaderCluster::parse(&buf, 0x40000).unwrap();
        assert_eq!(parsed, hc);
        assert_eq!(parsed.backing_format(), Some("raw"));
        assert_eq!(parsed.backing_file.as_deref(), Some("base.img"));
    }

    #[test]
    fn refuses_overlong_extension() {
        let mut hc = cluster();
        let mut buf = hc.write().unwrap();
        // First extension's length field.
        BigEndian::write_u32(&mut buf[116..120], 0x10_0000);
        let e = HeaderCluster::parse(&buf, 0x40000).unwrap_err().to_string();
        assert!(e.contains("beyond the header cluster"), "{e}");
    }
}
