//! Disks that travel with the VM (`--copy-storage-all`, and
//! `--copy-storage-inc`), for hosts that share no storage.
//!
//! The source describes each disk in a [`StoragePlan`] (format, size,
//! cluster size, backing setup) sent right after the configuration; the
//! destination creates each image at the path the configuration names
//! (as libvirt does: the same path on both hosts), refusing one that
//! already exists. Then, while RAM is copied, the disks' allocated
//! ranges go as `Disk` frames ([`DiskChunk`]), and the blocks the guest
//! changes meanwhile (blockdev's [`DiskDirtyMap`]) are sent again, the
//! last of them while the VM is paused.
//!
//! [`DiskDirtyMap`]: blockdev::virtio::disk_dirty::DiskDirtyMap
//!
//! As libvirt: with `All` the destination image holds the whole chain's
//! contents (a standalone image of the same format, size and cluster
//! size, no backing file); with `Incremental` only the top image's
//! allocated clusters travel, the image is created with the same backing
//! file name and format, and that backing file must already be there.
//!
//! This file holds the plan and the wire form of a chunk; the source's
//! copy is in `storage_send`, the destination's images in
//! `storage_receive`.

use serde::{Deserialize, Serialize};

use super::{MigrationError, Result};

/// The longest storage plan accepted (JSON).
pub const MAX_PLAN: u32 = 64 << 10;
/// The most disks a plan describes.
pub const MAX_DISKS: usize = 64;
/// The largest disk accepted (bytes): 64 TiB.
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// The bytes of a Disk frame before its data.
pub const CHUNK_HEAD: usize = 13;

/// How the disks reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Both hosts see the same images: nothing is copied.
    Shared,
    /// Each disk's whole contents (its backing chain included) into a
    /// standalone image.
    All,
    /// Each disk's top image only; its backing files are at the
    /// destination already.
    Incremental,
}

/// An image format the copy creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopiedFormat {
    /// qcow2.
    Qcow2,
    /// raw.
    Raw,
}

/// One disk's image as the destination creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Its format.
    pub format: CopiedFormat,
    /// Virtual size in bytes.
    pub size: u64,
    /// qcow2: cluster size in bytes.
    #[serde(default)]
    pub cluster_size: u64,
    /// qcow2: 2 or 3.
    #[serde(default)]
    pub version: u32,
    /// qcow2: refcount width in bits.
    #[serde(default)]
    pub refcount_bits: u32,
    /// qcow2: extended L2 entries.
    #[serde(default)]
    pub extended_l2: bool,
    /// qcow2 with `Incremental`: the backing file name as recorded.
    #[serde(default)]
    pub backing_file: Option<String>,
    /// Its format as recorded.
    #[serde(default)]
    pub backing_format: Option<String>,
}

/// What the source says of the disks, right after the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePlan {
    /// Shared, or copied.
    pub mode: StorageMode,
    /// One per configured disk, in order (empty when shared).
    pub disks: Vec<DiskPlan>,
}

impl StoragePlan {
    /// The plan of a migration on shared storage.
    pub fn shared() -> Self {
        StoragePlan {
            mode: StorageMode::Shared,
            disks: Vec::new(),
        }
    }

    /// Its JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan serializes")
    }

    /// Parses and checks the plan of a VM with `disks` disks.
    pub fn parse(bytes: &[u8], disks: usize) -> Result<Self> {
        let plan: StoragePlan = serde_json::from_slice(bytes)
            .map_err(|e| MigrationError::Stream(format!("the storage plan: {e}")))?;
        let bad = |text: String| Err(MigrationError::Stream(format!("the storage plan: {text}")));
        match plan.mode {
            StorageMode::Shared if !plan.disks.is_empty() => {
                return bad("shared storage with disks to copy".into())
            }
            StorageMode::All | StorageMode::Incremental if plan.disks.len() != disks => {
                return bad(format!(
                    "{} disks described for a VM of {disks}",
                    plan.disks.len()
                ))
            }
            _ => {}
        }
        if plan.disks.len() > MAX_DISKS {
            return bad(format!("{} disks, more than {MAX_DISKS}", plan.disks.len()));
        }
        for (i, disk) in plan.disks.iter().enumerate() {
            if disk.size == 0 || disk.size > MAX_DISK_SIZE || !disk.size.is_multiple_of(512) {
                return bad(format!(
                    "disk {i}: size {} is not a multiple of 512 from 512 to {MAX_DISK_SIZE}",
                    disk.size
                ));
            }
            if disk.format == CopiedFormat::Raw
                && (disk.backing_file.is_some() || disk.backing_format.is_some())
            {
                return bad(format!("disk {i}: a raw image with a backing file"));
            }
            if disk.backing_file.is_some() && plan.mode != StorageMode::Incremental {
                return bad(format!(
                    "disk {i}: a backing file outside an incremental copy"
                ));
            }
            if disk.format == CopiedFormat::Qcow2 {
                disk.create_options(i)?.validate().map_err(|e| {
                    MigrationError::Stream(format!("the storage plan: disk {i}: {e}"))
                })?;
            }
        }
        Ok(plan)
    }
}

impl DiskPlan {
    /// The qcow2 creation options it stands for.
    pub fn create_options(&self, index: usize) -> Result<qcow::create::CreateOptions> {
        let name_ok = |n: &Option<String>| {
            n.as_ref()
                .is_none_or(|n| !n.is_empty() && n.len() <= 1023 && !n.contains('\0'))
        };
        if !name_ok(&self.backing_file) || !name_ok(&self.backing_format) {
            return Err(MigrationError::Stream(format!(
                "the storage plan: disk {index}: a backing name that is empty, too long or holds NUL"
            )));
        }
        Ok(qcow::create::CreateOptions {
            size: self.size,
            version: self.version,
            cluster_size: self.cluster_size,
            refcount_bits: self.refcount_bits,
            extended_l2: self.extended_l2,
            backing_file: self.backing_file.clone(),
            backing_format: self.backing_format.clone(),
            ..Default::default()
        })
    }
}

/// What one Disk frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkBody<'a> {
    /// These bytes.
    Data(&'a [u8]),
    /// This many zero bytes.
    Zeroes(u64),
}

/// One Disk frame: a disk index, a byte offset and what goes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChunk<'a> {
    /// Which disk (its place in the configuration).
    pub disk: u32,
    /// Disk byte where it goes.
    pub offset: u64,
    /// What goes there.
    pub body: ChunkBody<'a>,
}

impl<'a> DiskChunk<'a> {
    /// The frame's head: disk u32 LE, offset u64 LE, kind (0 data, 1
    /// zeroes); zeroes are followed by their length u64 LE.
    pub fn head(&self) -> [u8; CHUNK_HEAD] {
        let mut head = [0u8; CHUNK_HEAD];
        head[..4].copy_from_slice(&self.disk.to_le_bytes());
        head[4..12].copy_from_slice(&self.offset.to_le_bytes());
        head[12] = u8::from(matches!(self.body, ChunkBody::Zeroes(_)));
        head
    }

    /// Reads a Disk frame's payload (not yet checked against any disk).
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let bad = || MigrationError::Stream("a Disk frame shorter than its head".into());
        let head = payload.get(..CHUNK_HEAD).ok_or_else(bad)?;
        let disk = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        let rest = &payload[CHUNK_HEAD..];
        let body = match head[12] {
            0 if !rest.is_empty() => ChunkBody::Data(rest),
            1 if rest.len() == 8 => {
                ChunkBody::Zeroes(u64::from_le_bytes(rest.try_into().expect("8 bytes")))
            }
            kind => {
                return Err(MigrationError::Stream(format!(
                    "a Disk frame of kind {kind} with {} bytes after its head",
                    rest.len()
                )))
            }
        };
        Ok(DiskChunk { disk, offset, body })
    }

    /// Bytes it covers on the disk.
    pub fn len(&self) -> u64 {
        match self.body {
            ChunkBody::Data(d) => d.len() as u64,
            ChunkBody::Zeroes(n) => n,
        }
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(size: u64) -> DiskPlan {
        DiskPlan {
            format: CopiedFormat::Qcow2,
            size,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            extended_l2: false,
            backing_file: None,
            backing_format: None,
        }
    }

    #[test]
    fn plans_round_trip_and_are_checked() {
        let plan = StoragePlan {
            mode: StorageMode::All,
            disks: vec![qcow2(1 << 20)],
        };
        assert_eq!(StoragePlan::parse(&plan.to_json(), 1).unwrap(), plan);
        assert!(StoragePlan::parse(&plan.to_json(), 2).is_err());
        let shared = StoragePlan::shared();
        assert_eq!(StoragePlan::parse(&shared.to_json(), 3).unwrap(), shared);
        for disk in [
            qcow2(0),
            qcow2(MAX_DISK_SIZE + 512),
            qcow2(1000),
            DiskPlan {
                cluster_size: 1000,
                ..qcow2(1 << 20)
            },
            DiskPlan {
                backing_file: Some("base.qcow2".into()),
                ..qcow2(1 << 20)
            },
            DiskPlan {
                format: CopiedFormat::Raw,
                backing_format: Some("raw".into()),
                ..qcow2(1 << 20)
            },
        ] {
            let bad = StoragePlan {
                mode: StorageMode::All,
                disks: vec![disk],
            };
            let err = StoragePlan::parse(&bad.to_json(), 1).unwrap_err();
            assert!(err.to_string().contains("disk 0"), "{err}");
        }
        let inc = StoragePlan {
            mode: StorageMode::Incremental,
            disks: vec![DiskPlan {
                backing_file: Some("".into()),
                ..qcow2(1 << 20)
            }],
        };
        assert!(StoragePlan::parse(&inc.to_json(), 1).is_err());
        assert!(StoragePlan::parse(b"{\"mode\":\"x\"}", 0).is_err());
    }

    #[test]
    fn chunks_round_trip_and_bad_ones_are_refused() {
        let data = [7u8; 512];
        for chunk in [
            DiskChunk {
                disk: 1,
                offset: 4096,
                body: ChunkBody::Data(&data),
            },
            DiskChunk {
                disk: 0,
                offset: 0,
                body: ChunkBody::Zeroes(1 << 20),
            },
        ] {
            let mut payload = chunk.head().to_vec();
            match chunk.body {
                ChunkBody::Data(d) => payload.extend_from_slice(d),
                ChunkBody::Zeroes(n) => payload.extend_from_slice(&n.to_le_bytes()),
            }
            assert_eq!(DiskChunk::parse(&payload).unwrap(), chunk);
        }
        assert!(DiskChunk::parse(&[0; 12]).is_err());
        assert!(DiskChunk::parse(&[0; 13]).is_err());
        let mut zero = [0u8; 20];
        zero[12] = 1;
        assert!(DiskChunk::parse(&zero).is_err());
        zero[12] = 2;
        assert!(DiskChunk::parse(&zero[..21.min(zero.len())]).is_err());
    }
}
