//! Creating new qcow2 images with the options qemu-img offers.

use std::sync::Arc;

use crate::device::BlockRead;
use crate::entries::table_set;
use crate::error::{Error, Result};
use crate::extensions::{default_feature_names, Extension, HeaderCluster};
use crate::header::{
    l1_entries_for, CompressionType, Header, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS,
    INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, MAX_L1_BYTES, V2_HEADER_LEN,
    V3_HEADER_LEN,
};
use crate::image::Qcow2;
use crate::refcount::{block_set, Refcounts};
use crate::storage::Storage;

/// The smallest cluster size extended L2 entries allow (QEMU's
/// validate_cluster_size): 32 subclusters of at least 512 bytes.
pub const MIN_EXTENDED_L2_CLUSTER_SIZE: u64 = 16384;

/// qemu-img's refusal of extended L2 entries with smaller clusters.
pub const EXTENDED_L2_CLUSTER_SIZE_REASON: &str =
    "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";

/// How much of a new image is allocated up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing: clusters are allocated on first write.
    #[default]
    Off,
    /// L2 tables and data clusters are allocated; the file stays sparse.
    Metadata,
    /// As metadata, and the file's blocks are reserved with fallocate.
    Falloc,
    /// As metadata, and every data cluster is written with zeros.
    Full,
}

impl Preallocation {
    /// Parses qemu-img's spelling.
    pub fn parse(s: &str) -> Option<Preallocation> {
        Some(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            _ => return None,
        })
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

/// Options of a new image (qemu-img's `-o` options for qcow2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to 512).
    pub size: u64,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Cluster size in bytes, a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64.
    pub refcount_bits: u32,
    /// Enable lazy refcounts.
    pub lazy_refcounts: bool,
    /// Use extended L2 entries (subclusters).
    pub extended_l2: bool,
    /// Compression type of compressed clusters.
    pub compression_type: CompressionType,
    /// Preallocation mode.
    pub preallocation: Preallocation,
    /// Backing file name as recorded.
    pub backing_file: Option<String>,
    /// Backing file format as recorded.
    pub backing_format: Option<String>,
    /// External data file name as recorded.
    pub data_file: Option<String>,
    /// The data file is a consistent raw image.
    pub data_file_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            data_file: None,
            data_file_raw: false,
        }
    }
}

fn invalid(option: &'static str, value: impl ToString, reason: &'static str) -> Error {
    Error::InvalidOption {
        option,
        value: value.to_string(),
        reason,
    }
}

impl CreateOptions {
    /// Checks the options against each other, with qemu-img's rules.
    pub fn validate(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(invalid(
                "cluster_size",
                cs,
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return Err(invalid(
                "refcount_bits",
                self.refcount_bits,
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if self.version != 2 && self.version != 3 {
            return Err(invalid(
                "compat",
                self.version,
                "unknown compatibility level",
            ));
        }
        if self.version == 2 {
            let v3 =
                "only supported with compatibility level 1.1 and above (use version=v3 or greater)";
            if self.lazy_refcounts {
                return Err(invalid("lazy_refcounts", "on", v3));
            }
            if self.refcount_bits != 16 {
                return Err(invalid("refcount_bits", self.refcount_bits, v3));
            }
            if self.extended_l2 {
                return Err(invalid("extended_l2", "on", v3));
            }
            if self.data_file.is_some() {
                return Err(invalid(
                    "data_file",
                    self.data_file.clone().unwrap_or_default(),
                    v3,
                ));
            }
            if self.compression_type != CompressionType::Zlib {
                return Err(invalid("compression_type", "zstd", v3));
            }
        }
        if self.extended_l2 && cs < MIN_EXTENDED_L2_CLUSTER_SIZE {
            return Err(invalid(
                "extended_l2",
                "on",
                EXTENDED_L2_CLUSTER_SIZE_REASON,
            ));
        }
        if self.data_file_raw && self.data_file.is_none() {
            return Err(invalid(
                "data_file_raw",
                "on",
                "data-file-raw requires data-file",
            ));
        }
        if self.data_file_raw && self.backing_file.is_some() {
            return Err(invalid(
                "data_file_raw",
                "on",
                "Backing file and raw external data file cannot be used together",
            ));
        }
        if self.preallocation != Preallocation::Off
            && self.backing_file.is_some()
            && !self.extended_l2
        {
            return Err(invalid(
                "preallocation",
                self.preallocation.name(),
                "Backing file and preallocation can only be used at the same time if extended_l2 is on",
            ));
        }
        if let Some(b) = &self.backing_file {
            if b.len() > crate::header::MAX_BACKING_NAME as usize {
                return Err(invalid("backing_file", b, "name longer than 1023 bytes"));
            }
        }
        let cluster_bits = cs.trailing_zeros();
        let l1 = l1_entries_for(self.size, cluster_bits, self.extended_l2);
        if l1 * 8 > MAX_L1_BYTES || self.size > (1u64 << 63) {
            return Err(Error::ImageTooLarge {
                size: self.size,
                cluster_size: cs,
            });
        }
        Ok(())
    }
}

/// How a new image is encrypted (qemu-img's `encrypt.*` options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewEncryption {
    /// A LUKS header in the image's clusters, slot 0 opened by `password`.
    Luks {
        /// Cipher, hash and PBKDF2 time.
        options: crate::crypto::LuksOptions,
        /// The passphrase of key slot 0.
        password: Vec<u8>,
    },
    /// qcow's legacy AES-CBC (`encrypt.format=aes`): nothing but the
    /// header's `crypt_method`, the key being the password itself.
    Aes,
}

/// Writes a new, empty qcow2 image into `file` (which is truncated).
/// `data_file` is the external data file, if the options name one;
/// `backing` is the opened backing image, needed only with preallocation.
pub fn create(
    file: Arc<dyn Storage>,
    data_file: Option<Arc<dyn Storage>>,
    backing: Option<Box<dyn BlockRead>>,
    opts: &CreateOptions,
) -> Result<Qcow2> {
    create_encrypted(file, data_file, backing, opts, None)
}

/// [`create`] of an encrypted image: a LUKS header goes into the clusters
/// after the L1 table (where QEMU's allocator puts it) and the header
/// extension points at it.
pub fn create_encrypted(
    file: Arc<dyn Storage>,
    data_file: Option<Arc<dyn Storage>>,
    backing: Option<Box<dyn BlockRead>>,
    opts: &CreateOptions,
    encryption: Option<&NewEncryption>,
) -> Result<Qcow2> {
    opts.validate()?;
    let luks = match encryption {
        Some(NewEncryption::Luks { options, password }) => {
            Some(crate::crypto::luks::create(options, password)?)
        }
        _ => None,
    };
    let size = opts.size.div_ceil(512) * 512;
    let cs = opts.cluster_size;
    let cluster_bits = cs.trailing_zeros();
    let refcount_order = opts.refcount_bits.trailing_zeros();
    file.set_len(0)?;
    // Cluster 1: refcount table, cluster 2: its first block.
    let mut rt = vec![0u8; cs as usize];
    table_set(&mut rt, 0, 2 * cs);
    file.write_at(&rt, cs)?;
    let mut rb = vec![0u8; cs as usize];
    for c in 0..3 {
        block_set(&mut rb, c, refcount_order, 1);
    }
    file.write_at(&rb, 2 * cs)?;
    // The L1 table goes wherever the allocator puts it (cluster 3 unless
    // the tables need more refcount blocks).
    let l1_size = l1_entries_for(size, cluster_bits, opts.extended_l2);
    let mut rc = Refcounts::load(&*file, cluster_bits, refcount_order, cs, 1)?;
    let l1_offset = if l1_size > 0 {
        let clusters = (l1_size * 8).div_ceil(cs);
        let first = rc.alloc(&*file, clusters)?;
        file.write_at(&vec![0u8; (l1_size * 8) as usize], first * cs)?;
        first * cs
    } else {
        // QEMU puts an empty L1 table at cluster 3 too.
        3 * cs
    };
    let mut crypto_ext = None;
    if let Some(volume) = &luks {
        let len = volume.area.len() as u64;
        let first = rc.alloc(&*file, len.div_ceil(cs))?;
        let mut area = volume.area.clone();
        area.resize((len.div_ceil(cs) * cs) as usize, 0);
        file.write_at(&area, first * cs)?;
        let mut data = vec![0u8; 16];
        data[..8].copy_from_slice(&(first * cs).to_be_bytes());
        data[8..].copy_from_slice(&len.to_be_bytes());
        crypto_ext = Some(data);
    }
    rc.flush(&*file)?;
    let (rt_offset, rt_clusters) = rc.table_location();

    let mut incompatible = 0;
    let mut autoclear = 0;
    if opts.extended_l2 {
        incompatible |= INCOMPAT_EXTL2;
    }
    if opts.compression_type != CompressionType::Zlib {
        incompatible |= INCOMPAT_COMPRESSION;
    }
    if opts.data_file.is_some() {
        incompatible |= INCOMPAT_DATA_FILE;
    }
    if opts.data_file_raw {
        autoclear |= AUTOCLEAR_DATA_FILE_RAW;
    }
    let v3 = opts.version >= 3;
    let header = Header {
        version: opts.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: match encryption {
            None => 0,
            Some(NewEncryption::Aes) => crate::crypto::CRYPT_AES,
            Some(NewEncryption::Luks { .. }) => crate::crypto::CRYPT_LUKS,
        },
        l1_size: l1_size as u32,
        l1_table_offset: l1_offset,
        refcount_table_offset: rt_offset,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompatible,
        compatible_features: if opts.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: autoclear,
        refcount_order,
        header_length: if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN },
        compression_type: opts.compression_type,
        extra_fields: if v3 { vec![0; 7] } else { Vec::new() },
    };
    let mut extensions = Vec::new();
    if let (Some(_), Some(fmt)) = (&opts.backing_file, &opts.backing_format) {
        extensions.push(Extension::BackingFormat(fmt.clone()));
    }
    if let Some(df) = &opts.data_file {
        extensions.push(Extension::DataFile(df.clone()));
    }
    if let Some(data) = crypto_ext {
        extensions.push(Extension::Other {
            ext_type: crate::extensions::EXT_CRYPTO,
            data,
        });
    }
    // QEMU leaves the feature table out of images with clusters of 4 KiB
    // or less (it would crowd out the backing file name).
    if v3 && cs > 4096 {
        extensions.push(Extension::FeatureNames(default_feature_names()));
    }
    let mut hc = HeaderCluster {
        header,
        extensions,
        backing_file: opts.backing_file.clone(),
    };
    let buf = hc.write()?;
    let end = (hc.header.header_length as usize).max(512).min(buf.len());
    // Write the used part of the header cluster (the rest reads as zero).
    let used = buf
        .iter()
        .rposition(|&b| b != 0)
        .map_or(end, |p| (p + 1).max(end));
    file.write_at(&buf[..used], 0)?;
    if let Some(df) = &data_file {
        df.set_len(0)?;
        df.set_len(size)?;
    }
    file.flush()?;
    let image = Qcow2::open_parts(file, hc, true, backing, data_file)?;
    if let Some(volume) = &luks {
        image.set_cipher(crate::crypto::ImageCipher::luks(
            volume.header.payload_cipher(&volume.key)?,
        ));
    }
    if opts.preallocation != Preallocation::Off {
        image.preallocate_new(size, opts.preallocation)?;
    }
    image.flush()?;
    Ok(image)
}
