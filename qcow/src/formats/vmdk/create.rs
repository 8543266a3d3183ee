//! New VMDK images in each of qemu-img's subformats, laid out as QEMU 10
//! lays them out: sparse extents with a redundant and a primary grain
//! directory whose grain tables are all allocated up front, a 20-sector
//! descriptor area, and grains from a grain-aligned offset; descriptor
//! files naming `NAME-flat.vmdk`, `NAME-sNNN.vmdk` or `NAME-fNNN.vmdk`
//! extents of at most 2 GiB.

use byteorder::{ByteOrder, LittleEndian};

use super::descriptor::NewDescriptor;
use super::header::{
    SparseHeader, COMPRESSION_DEFLATE, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT, FLAG_RGD,
    FLAG_ZERO_GRAIN,
};
use super::FORMAT;
use crate::error::Result;
use crate::formats::{invalid, SideFiles};
use crate::storage::Storage;

/// Bytes of one extent of the twoGbMaxExtent subformats.
const SPLIT_BYTES: u64 = 2 << 30;
/// Sectors per grain of new sparse extents (64 KiB).
const GRAIN_SECTORS: u64 = 128;
/// Grain table entries of new sparse extents.
const GTES_PER_GT: u64 = 512;
/// Sectors of the descriptor area of new sparse extents.
const DESC_SECTORS: u64 = 20;

/// The layout of a new image (`-o subformat=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse file with its descriptor inside (the default).
    #[default]
    MonolithicSparse,
    /// A descriptor and one flat file.
    MonolithicFlat,
    /// A descriptor and sparse files of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor and flat files of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One sparse file of deflate-compressed grains.
    StreamOptimized,
}

impl Subformat {
    /// Parses `-o subformat=`.
    pub fn parse(name: &str) -> Option<Subformat> {
        Some(match name {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => return None,
        })
    }

    /// The `createType` it records.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// Options of a new VMDK image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The layout.
    pub subformat: Subformat,
    /// `ddb.adapterType`: ide, lsilogic, buslogic or legacyESX.
    pub adapter_type: String,
    /// `ddb.virtualHWVersion`.
    pub hw_version: String,
    /// `ddb.toolsVersion`.
    pub tools_version: String,
    /// Zeroed-grain grain table entries.
    pub zeroed_grain: bool,
    /// The parent (backing) image: its CID and the name the descriptor
    /// records (`parentFileNameHint`).
    pub parent: Option<(u32, String)>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            subformat: Subformat::default(),
            adapter_type: "ide".into(),
            hw_version: "4".into(),
            tools_version: "2147483647".into(),
            zeroed_grain: false,
            parent: None,
        }
    }
}

/// Writes an empty sparse extent of `capacity` sectors into `storage`.
fn init_sparse(
    storage: &dyn Storage,
    capacity: u64,
    compressed: bool,
    zeroed_grain: bool,
) -> Result<()> {
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let gt_sectors = (GTES_PER_GT * 4).div_ceil(512);
    let gt_count = grains.div_ceil(GTES_PER_GT);
    let gd_sectors = (gt_count * 4).div_ceil(512);
    let rgd_offset = 1 + DESC_SECTORS;
    let gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
    let grain_offset =
        (gd_offset + gd_sectors + gt_sectors * gt_count).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let mut flags = FLAG_NL_DETECT | FLAG_RGD;
    if zeroed_grain {
        flags |= FLAG_ZERO_GRAIN;
    }
    if compressed {
        flags |= FLAG_COMPRESS | FLAG_MARKER;
    }
    let version = if compressed {
        3
    } else if zeroed_grain {
        2
    } else {
        1
    };
    let header = SparseHeader {
        version,
        flags,
        capacity,
        grain_sectors: GRAIN_SECTORS,
        desc_offset: 1,
        desc_size: DESC_SECTORS,
        gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset,
        gd_offset,
        grain_offset,
        compress_algorithm: if compressed { COMPRESSION_DEFLATE } else { 0 },
    };
    storage.write_at(&header.to_bytes(), 0)?;
    storage.set_len(grain_offset * 512)?;
    for (dir, first_table) in [
        (rgd_offset, rgd_offset + gd_sectors),
        (gd_offset, gd_offset + gd_sectors),
    ] {
        let mut buf = vec![0u8; (gd_sectors * 512) as usize];
        for (i, entry) in buf.chunks_exact_mut(4).take(gt_count as usize).enumerate() {
            let sector = u32::try_from(first_table + i as u64 * gt_sectors).map_err(|_| {
                invalid(
                    FORMAT,
                    "size",
                    capacity * 512,
                    "too large for a sparse extent",
                )
            })?;
            LittleEndian::write_u32(entry, sector);
        }
        storage.write_at(&buf, dir * 512)?;
    }
    Ok(())
}

/// The file name of extent `name_part` (`-flat`, `-s001`, ...) next to an
/// image named `image_name`, as QEMU derives it: the part of the base name
/// before its last dot, the part, then the extension.
fn extent_name(image_name: &str, part: &str) -> String {
    let base = image_name.rsplit('/').next().unwrap_or(image_name);
    match base.rfind('.') {
        Some(dot) if dot > 0 => format!("{}{part}{}", &base[..dot], &base[dot..]),
        _ => format!("{base}{part}"),
    }
}

/// Writes a new, empty VMDK of `size` bytes (rounded up to a sector) into
/// empty `storage`, creating its extent files through `files`.
pub fn create(
    storage: &dyn Storage,
    size: u64,
    opts: &CreateOptions,
    files: &dyn SideFiles,
    cid: u32,
) -> Result<()> {
    let size = size.div_ceil(512) * 512;
    let sectors = size / 512;
    let flat = matches!(
        opts.subformat,
        Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat
    );
    if flat && opts.parent.is_some() {
        return Err(invalid(
            FORMAT,
            "backing_file",
            0,
            "Flat image can't have backing file",
        ));
    }
    let image_name = files.image_name();
    let mut lines = Vec::new();
    let base = image_name
        .rsplit('/')
        .next()
        .unwrap_or(&image_name)
        .to_string();
    match opts.subformat {
        Subformat::MonolithicSparse | Subformat::StreamOptimized => {
            let compressed = opts.subformat == Subformat::StreamOptimized;
            init_sparse(storage, sectors, compressed, opts.zeroed_grain)?;
            lines.push(format!("RW {sectors} SPARSE \"{base}\""));
        }
        Subformat::MonolithicFlat => {
            let name = extent_name(&image_name, "-flat");
            let file = files.create(&name)?;
            file.storage.set_len(size)?;
            file.storage.flush()?;
            lines.push(format!("RW {sectors} FLAT \"{name}\" 0"));
        }
        Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat => {
            let sparse = opts.subformat == Subformat::TwoGbMaxExtentSparse;
            let mut left = size;
            let mut index = 1;
            while left > 0 {
                let bytes = left.min(SPLIT_BYTES);
                let part = format!("-{}{index:03}", if sparse { 's' } else { 'f' });
                let name = extent_name(&image_name, &part);
                let file = files.create(&name)?;
                if sparse {
                    init_sparse(&*file.storage, bytes / 512, false, opts.zeroed_grain)?;
                    lines.push(format!("RW {} SPARSE \"{name}\"", bytes / 512));
                } else {
                    file.storage.set_len(bytes)?;
                    lines.push(format!("RW {} FLAT \"{name}\" 0", bytes / 512));
                }
                file.storage.flush()?;
                left -= bytes;
                index += 1;
            }
        }
    }
    let text = NewDescriptor {
        cid,
        create_type: opts.subformat.name(),
        extent_lines: lines,
        hw_version: &opts.hw_version,
        size,
        adapter_type: &opts.adapter_type,
        tools_version: &opts.tools_version,
        parent: opts
            .parent
            .as_ref()
            .map(|(cid, name)| (*cid, name.as_str())),
    }
    .render();
    let at = match opts.subformat {
        Subformat::MonolithicSparse | Subformat::StreamOptimized => {
            if text.len() as u64 > DESC_SECTORS * 512 {
                return Err(invalid(
                    FORMAT,
                    "descriptor",
                    text.len() as u64,
                    "longer than its 20 sectors",
                ));
            }
            512
        }
        _ => 0,
    };
    storage.write_at(text.as_bytes(), at)?;
    storage.flush()
}
