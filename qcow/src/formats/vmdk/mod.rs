//! VMware VMDK images: a hosted sparse file with its descriptor embedded
//! (monolithicSparse, streamOptimized with deflate-compressed grains), or
//! a text descriptor naming extents in other files (monolithicFlat,
//! twoGbMaxExtentSparse and twoGbMaxExtentFlat), each extent flat (raw
//! data at an offset) or sparse.
//!
//! Extent files are opened through [`SideFiles`], which refuses names
//! outside the descriptor's folder; an extent naming the descriptor
//! itself, a sparse file used twice and flat extents overlapping in one
//! file are refused here. A `parentFileNameHint` names a parent (backing)
//! image, always a vmdk as QEMU reads it: unallocated grains read from it,
//! and a partial write to one copies the rest of the grain up first.
//! VMFS sparse ("COWD") extents, alone or named by a descriptor, are read
//! and written as QEMU writes them (a new grain at the end of the file; a
//! write into a grain table the file lacks is refused, as QEMU refuses
//! it); SE sparse ("seSparse") extents named by a descriptor, which QEMU
//! reads only that way, are read only.
//!
//! As QEMU does, the first write after each open puts a new random CID
//! into the descriptor, and a child whose `parentCID` no longer matches
//! its parent's CID fails reads from the parent and grain allocations
//! with EINVAL ([`cid`]).

pub mod cid;
pub mod create;
pub mod descriptor;
pub mod header;
pub mod sesparse;
pub mod sparse;

use std::sync::Arc;

use self::descriptor::{Descriptor, ExtentType, MAX_DESCRIPTOR};
use self::header::MAGIC;
use self::sesparse::SeSparseExtent;
use self::sparse::{Grain, SparseExtent};
use super::{invalid, BackingFile, CheckReport, ForeignImage, InfoValue, SideFiles};
use crate::device::{check_range, BlockRead, Extent, ExtentKind, FileIndex, LayerFile};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The format's name as qemu-img spells it.
pub const FORMAT: &str = "vmdk";
/// The most guest bytes one `extents` answer describes (its memory is
/// bounded by its steps; a missing grain table is one step).
const MAX_EXTENTS_SPAN: u64 = 1 << 40;

/// Whether a flat extent's file is asked where its holes are.
#[derive(Debug, Clone, Copy)]
enum FlatHoles {
    /// Asked: its holes are zero extents, as qemu-img's map shows them.
    Ask,
    /// Not asked (two `lseek` calls saved per request): the whole flat
    /// range is data, for reading it.
    AsData,
}
/// Descriptor bytes QEMU reads for the CIDs of an embedded descriptor.
const EMBEDDED_DESCRIPTOR: usize = 20 * 512;

/// The refusal to write an SE sparse extent, in QEMU's words.
fn read_only_sesparse() -> Error {
    invalid(
        FORMAT,
        "extent type",
        0,
        "No write support for seSparse images available",
    )
}

/// Where an extent's data is.
enum Data {
    /// Raw data from byte `offset` of a file.
    Flat {
        storage: Arc<dyn Storage>,
        offset: u64,
    },
    /// A sparse file (boxed: it is much larger than a flat extent).
    Sparse(Box<SparseExtent>),
    /// An SE sparse file (read only).
    SeSparse(Box<SeSparseExtent>),
}

/// One extent: a guest range and its data.
struct VmdkExtent {
    start: u64,
    len: u64,
    data: Data,
    /// The type as the descriptor names it (`None` for the extent of a
    /// monolithic file).
    type_name: Option<String>,
    /// The file's name as `img info` shows it.
    file_name: String,
    /// Whether the extent is in a file of its own (not the image file).
    separate: bool,
}

/// An open VMDK image.
pub struct Vmdk {
    storage: Arc<dyn Storage>,
    extents: Vec<VmdkExtent>,
    size: u64,
    /// The CID read at open (QEMU shows this one until the next open,
    /// also after a write has put a new one into the file).
    cid: u32,
    parent_cid: u32,
    /// Where the descriptor area QEMU rewrites the CID in starts in the
    /// image file: 0 for a descriptor file, 512 for a sparse file.
    desc_offset: u64,
    /// The CID rewrite of this open and the parent's CID check.
    cids: cid::CidState,
    create_type: String,
    writable: bool,
    /// The parent the descriptor names.
    backing_file: Option<BackingFile>,
    /// The parent, once the opener has opened it.
    backing: Option<Box<dyn BlockRead>>,
}

impl Vmdk {
    /// Opens the VMDK image in `storage`, its extents through `files`.
    pub fn open(storage: Arc<dyn Storage>, writable: bool, files: &dyn SideFiles) -> Result<Vmdk> {
        let file_len = storage.len()?;
        if file_len < 4 {
            return Err(invalid(
                FORMAT,
                "file length",
                file_len,
                "File is too small, not a valid image",
            ));
        }
        let mut magic = [0u8; 4];
        storage.read_at(&mut magic, 0)?;
        if u32::from_le_bytes(magic) == MAGIC {
            return Self::open_monolithic(storage, writable, files);
        }
        if &magic == header::COWD_MAGIC {
            return Self::open_vmfs_sparse(storage, writable, files);
        }
        let mut text = vec![0u8; file_len.min(MAX_DESCRIPTOR) as usize];
        storage.read_at(&mut text, 0)?;
        let descriptor = Descriptor::parse_bytes(&text)?;
        let create_type = descriptor
            .create_type
            .clone()
            .ok_or_else(|| invalid(FORMAT, "createType", 0, "invalid VMDK image descriptor"))?;
        if !matches!(
            create_type.as_str(),
            "monolithicFlat"
                | "vmfs"
                | "vmfsSparse"
                | "seSparse"
                | "twoGbMaxExtentSparse"
                | "twoGbMaxExtentFlat"
        ) {
            return Err(Error::Unsupported(format!(
                "Unsupported image type '{create_type}'"
            )));
        }
        let mut extents: Vec<VmdkExtent> = Vec::new();
        let mut used: Vec<(String, ExtentType, u64, u64)> = Vec::new();
        let mut start = 0u64;
        for line in &descriptor.extents {
            let file = files.open(&line.file, writable)?;
            if file.identity == files.image_identity() {
                return Err(invalid(
                    FORMAT,
                    "extent",
                    0,
                    "an extent names the descriptor itself",
                ));
            }
            let (data, len) = match line.kind {
                ExtentType::Flat => {
                    let offset = line.flat_offset.checked_mul(512).ok_or_else(|| {
                        invalid(FORMAT, "flat offset", line.flat_offset, "offset overflows")
                    })?;
                    let len = line
                        .sectors
                        .checked_mul(512)
                        .filter(|l| offset.checked_add(*l).is_some())
                        .ok_or_else(|| {
                            invalid(FORMAT, "extent sectors", line.sectors, "size overflows")
                        })?;
                    (
                        Data::Flat {
                            storage: file.storage,
                            offset,
                        },
                        len,
                    )
                }
                ExtentType::Sparse => {
                    let sparse = SparseExtent::open(file.storage)?;
                    if sparse.is_empty() {
                        return Err(invalid(
                            FORMAT,
                            "extent capacity",
                            0,
                            "a sparse extent holding a descriptor of its own is not supported",
                        ));
                    }
                    let len = sparse.len();
                    (Data::Sparse(Box::new(sparse)), len)
                }
                ExtentType::SeSparse => {
                    if writable {
                        return Err(read_only_sesparse());
                    }
                    let sparse = SeSparseExtent::open(file.storage)?;
                    let len = sparse.len();
                    (Data::SeSparse(Box::new(sparse)), len)
                }
            };
            let (from, to) = match &data {
                Data::Flat { offset, .. } => (*offset, offset + len),
                Data::Sparse(_) | Data::SeSparse(_) => (0, u64::MAX),
            };
            if used
                .iter()
                .any(|(id, _, a, b)| *id == file.identity && from < *b && *a < to)
            {
                return Err(invalid(
                    FORMAT,
                    "extent",
                    start / 512,
                    "extents overlap in one file",
                ));
            }
            used.push((file.identity.clone(), line.kind, from, to));
            let end = start.checked_add(len).ok_or_else(|| {
                invalid(
                    FORMAT,
                    "extent sectors",
                    line.sectors,
                    "the disk's size overflows",
                )
            })?;
            extents.push(VmdkExtent {
                start,
                len,
                data,
                type_name: Some(line.type_name.clone()),
                file_name: file.name,
                separate: true,
            });
            start = end;
        }
        if extents.is_empty() {
            return Err(invalid(
                FORMAT,
                "extents",
                0,
                "the descriptor names no extent",
            ));
        }
        let (cid, parent_cid) = cid::read_cids(&*storage, 0)?;
        Ok(Vmdk {
            storage,
            extents,
            size: start,
            cid,
            parent_cid,
            desc_offset: 0,
            cids: cid::CidState::default(),
            backing_file: Self::parent_of(&descriptor),
            create_type,
            writable,
            backing: None,
        })
    }

    /// The parent `parentFileNameHint` names (QEMU reads the hint alone,
    /// whatever `parentCID` says, and opens it as a vmdk).
    fn parent_of(descriptor: &Descriptor) -> Option<BackingFile> {
        match descriptor.parent_hint.as_deref() {
            Some(name) if !name.is_empty() => Some(BackingFile {
                name: name.to_string(),
                format: Some(FORMAT),
            }),
            _ => None,
        }
    }

    /// Opens a lone VMFS sparse ("COWD") file, its CIDs read from the text
    /// at byte 512 as QEMU reads them.
    fn open_vmfs_sparse(
        storage: Arc<dyn Storage>,
        writable: bool,
        files: &dyn SideFiles,
    ) -> Result<Vmdk> {
        let sparse = SparseExtent::open(storage.clone())?;
        // QEMU reads the CIDs (and a parent hint) from text at byte 512,
        // up to its first NUL, and refuses the file without a CID there.
        let file_len = storage.len()?;
        let mut text =
            vec![0u8; (EMBEDDED_DESCRIPTOR as u64).min(file_len.saturating_sub(512)) as usize];
        storage.read_at(&mut text, 512)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        if !String::from_utf8_lossy(&text[..end]).contains("CID") {
            return Err(invalid(
                FORMAT,
                "descriptor",
                512,
                "a VMFS sparse file needs CID and parentCID text at byte 512",
            ));
        }
        let descriptor = Descriptor::parse_bytes(&text)?;
        let (cid, parent_cid) = cid::read_cids(&*storage, cid::EMBEDDED_OFFSET)?;
        let len = sparse.len();
        Ok(Vmdk {
            storage,
            extents: vec![VmdkExtent {
                start: 0,
                len,
                data: Data::Sparse(Box::new(sparse)),
                type_name: None,
                file_name: files.image_name(),
                separate: false,
            }],
            size: len,
            cid,
            parent_cid,
            desc_offset: cid::EMBEDDED_OFFSET,
            cids: cid::CidState::default(),
            // QEMU shows the text's createType, empty when there is none.
            create_type: descriptor.create_type.clone().unwrap_or_default(),
            writable,
            backing_file: Self::parent_of(&descriptor),
            backing: None,
        })
    }

    fn open_monolithic(
        storage: Arc<dyn Storage>,
        writable: bool,
        files: &dyn SideFiles,
    ) -> Result<Vmdk> {
        let sparse = SparseExtent::open(storage.clone())?;
        if sparse.is_empty() {
            return Err(invalid(
                FORMAT,
                "capacity",
                0,
                "sparse files holding a descriptor of extents elsewhere are not supported",
            ));
        }
        if writable && sparse.header().version == 3 && !sparse.header().compressed() {
            return Err(invalid(
                FORMAT,
                "version",
                3,
                "VMDK version 3 must be read only",
            ));
        }
        let mut text = vec![0u8; EMBEDDED_DESCRIPTOR];
        storage.read_at(&mut text, 512)?;
        let descriptor = Descriptor::parse_bytes(&text)?;
        let create_type = if sparse.header().compressed() {
            "streamOptimized"
        } else {
            "monolithicSparse"
        };
        let (cid, parent_cid) = cid::read_cids(&*storage, cid::EMBEDDED_OFFSET)?;
        let len = sparse.len();
        Ok(Vmdk {
            storage,
            extents: vec![VmdkExtent {
                start: 0,
                len,
                data: Data::Sparse(Box::new(sparse)),
                type_name: None,
                file_name: files.image_name(),
                separate: false,
            }],
            size: len,
            cid,
            parent_cid,
            desc_offset: cid::EMBEDDED_OFFSET,
            cids: cid::CidState::default(),
            create_type: create_type.to_string(),
            writable,
            backing_file: Self::parent_of(&descriptor),
            backing: None,
        })
    }

    /// QEMU's vmdk check: every allocated grain (and every flat extent)
    /// must start inside its file.
    fn check_extents(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        // QEMU's vmdk_co_check stops at the first cluster whose offset is
        // past the end of its file: it prints the sector, counts one
        // corruption and fails with EINVAL.
        let mut past_eof = None;
        for e in &self.extents {
            let first_sector = e.start / 512;
            match &e.data {
                Data::Flat { storage, offset } => {
                    if *offset >= storage.len()? {
                        past_eof = Some(first_sector);
                    }
                }
                Data::Sparse(s) => {
                    let file_len = s.storage().len()?;
                    s.for_each_grain(|grain_offset, grain| {
                        let host = match grain {
                            Grain::Data(h) | Grain::Compressed(h) => h,
                            Grain::Unallocated | Grain::Zero => return,
                        };
                        report.allocated_clusters += 1;
                        if host >= file_len && past_eof.is_none() {
                            past_eof = Some(first_sector + grain_offset / 512);
                        }
                    })?;
                }
                Data::SeSparse(s) => {
                    let file_len = s.storage().len()?;
                    s.for_each_grain(|grain_offset, grain| {
                        let Grain::Data(host) = grain else { return };
                        report.allocated_clusters += 1;
                        if host >= file_len && past_eof.is_none() {
                            past_eof = Some(first_sector + grain_offset / 512);
                        }
                    })?;
                }
            }
            if let Some(sector) = past_eof {
                report.corrupt(format!(
                    "ERROR: cluster offset for sector {sector} points after EOF"
                ));
                report.stopped_errno = Some(libc::EINVAL);
                break;
            }
        }
        Ok(report)
    }

    /// The content ID (`CID`), which an overlay records as its
    /// `parentCID`.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// The `createType`.
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// Appends the extents of `[offset, offset+len)` to `out`, as
    /// [`BlockRead::extents`] describes them; `holes` says whether a flat
    /// extent's file is asked where its holes are.
    fn extents_into(
        &self,
        offset: u64,
        len: u64,
        holes: FlatHoles,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let end = offset
            + len
                .min(self.size.saturating_sub(offset))
                .min(MAX_EXTENTS_SPAN);
        let mut pos = offset;
        let mut steps = 0;
        while pos < end && steps < crate::formats::MAX_EXTENT_STEPS {
            let index = self.extent_index_at(pos);
            let e = &self.extents[index];
            let file = Self::file_index(e, index);
            let inner = pos - e.start;
            let room = (e.len - inner).min(end - pos);
            let (kind, n) = match &e.data {
                Data::Flat { storage, offset } => {
                    let host_offset = offset + inner;
                    let data = ExtentKind::Data { host_offset, file };
                    match holes {
                        // A read of the file's holes gives their zeros.
                        FlatHoles::AsData => (data, room),
                        // A flat piece may be cut short by its file's holes.
                        FlatHoles::Ask => {
                            let (is_data, m) = storage.data_extent(host_offset, room)?;
                            let kind = if is_data {
                                data
                            } else {
                                ExtentKind::Zero {
                                    host_offset: Some(host_offset),
                                }
                            };
                            (kind, m.clamp(1, room))
                        }
                    }
                }
                Data::Sparse(s) => {
                    let (grain, left) = s.run(inner, room)?;
                    let kind = match grain {
                        Grain::Unallocated => ExtentKind::Unallocated { host_offset: None },
                        Grain::Zero => ExtentKind::Zero { host_offset: None },
                        Grain::Data(h) => ExtentKind::Data {
                            host_offset: h,
                            file,
                        },
                        Grain::Compressed(h) => ExtentKind::Compressed {
                            host_offset: h,
                            compressed_len: s.grain_bytes(),
                        },
                    };
                    (kind, left.min(room))
                }
                Data::SeSparse(s) => {
                    let (grain, left) = s.lookup(inner)?;
                    let kind = match grain {
                        Grain::Data(h) => ExtentKind::Data {
                            host_offset: h,
                            file,
                        },
                        Grain::Zero => ExtentKind::Zero { host_offset: None },
                        _ => ExtentKind::Unallocated { host_offset: None },
                    };
                    (kind, left.min(room))
                }
            };
            crate::formats::push_extent(out, pos, n, kind);
            pos += n;
            steps += 1;
        }
        Ok(())
    }

    /// The position of the extent holding guest byte `offset`.
    fn extent_index_at(&self, offset: u64) -> usize {
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        i.min(self.extents.len() - 1)
    }

    /// The extent holding guest byte `offset`.
    fn extent_at(&self, offset: u64) -> &VmdkExtent {
        &self.extents[self.extent_index_at(offset)]
    }

    /// The file index extent `index` reports its data in: the image file
    /// for the extent of a monolithic file, else the extent's position
    /// plus one (an extent's own file, as [`BlockRead::extent_file`]
    /// hands it out).
    fn file_index(e: &VmdkExtent, index: usize) -> FileIndex {
        if e.separate {
            // The descriptor's extent count is bounded by its size.
            FileIndex(u32::try_from(index + 1).expect("extent count fits u32"))
        } else {
            FileIndex::IMAGE
        }
    }

    /// Applies `f` to each piece of `[offset, offset+len)` that lies in one
    /// extent and (for sparse extents) one grain: (extent, offset in the
    /// extent, bytes, offset in the request).
    fn for_pieces(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&VmdkExtent, u64, u64, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let e = self.extent_at(pos);
            let inner = pos - e.start;
            let mut n = (e.len - inner).min(len - done);
            let grain = match &e.data {
                Data::Sparse(s) => Some(s.grain_bytes()),
                Data::SeSparse(s) => Some(s.grain_bytes()),
                Data::Flat { .. } => None,
            };
            if let Some(g) = grain {
                n = n.min(g - inner % g);
            }
            f(e, inner, n, done as usize)?;
            done += n;
        }
        Ok(())
    }
}

impl BlockRead for Vmdk {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.for_pieces(offset, buf.len() as u64, |e, inner, n, at| {
            let part = &mut buf[at..at + n as usize];
            match &e.data {
                Data::Flat { storage, offset } => storage.read_at(part, offset + inner),
                Data::Sparse(s) => match self.backing.as_deref() {
                    Some(b) if s.lookup(inner)?.0 == Grain::Unallocated => {
                        self.cids.check_parent(b, self.parent_cid)?;
                        super::read_backing(Some(b), part, e.start + inner)
                    }
                    _ => s.read_in_grain(part, inner),
                },
                Data::SeSparse(s) => match self.backing.as_deref() {
                    Some(b) if s.lookup(inner)?.0 == Grain::Unallocated => {
                        self.cids.check_parent(b, self.parent_cid)?;
                        super::read_backing(Some(b), part, e.start + inner)
                    }
                    _ => s.read_in_grain(part, inner),
                },
            }
        })
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.extents_into(offset, len, FlatHoles::Ask, &mut out)?;
        Ok(out)
    }

    fn extents_for_io(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        self.extents_into(offset, len, FlatHoles::AsData, out)
    }

    fn backing(&self) -> Option<&dyn BlockRead> {
        self.backing.as_deref()
    }

    fn format_name(&self) -> &'static str {
        FORMAT
    }

    fn extent_file(&self, file: FileIndex) -> Option<LayerFile> {
        if file.is_image() {
            return LayerFile::own(&self.storage, file);
        }
        let e = self.extents.get((file.0 as usize).checked_sub(1)?)?;
        let storage = match &e.data {
            Data::Flat { storage, .. } => storage.clone(),
            Data::Sparse(s) => s.storage().clone(),
            Data::SeSparse(s) => s.storage().clone(),
        };
        e.separate.then(|| LayerFile {
            storage,
            name: Some(e.file_name.clone()),
        })
    }

    fn file_holes_are_data(&self) -> bool {
        // Only flat extents report zeros with a host offset (their
        // file's holes); QEMU's vmdk driver calls them data and recurses.
        true
    }

    fn asks_file_about_data(&self, file: FileIndex) -> bool {
        // QEMU's vmdk driver recurses into a flat extent's file only: a
        // sparse grain in a hole of its file is data, not zero.
        let index = match file.0.checked_sub(1) {
            Some(i) => i as usize,
            // The image's own file holds the one sparse extent of a
            // monolithic image.
            None => return false,
        };
        self.extents
            .get(index)
            .is_some_and(|e| e.separate && matches!(e.data, Data::Flat { .. }))
    }
}

impl ForeignImage for Vmdk {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size)?;
        self.for_pieces(offset, buf.len() as u64, |e, inner, n, at| {
            let part = &buf[at..at + n as usize];
            match &e.data {
                Data::Flat { storage, offset } => storage.write_at(part, offset + inner)?,
                Data::Sparse(s) => match self.backing.as_deref() {
                    Some(b) if s.header().compressed() => {
                        let grain = s.lookup(inner)?.0;
                        if matches!(grain, Grain::Unallocated | Grain::Zero) {
                            // A compressed grain is written whole or not
                            // at all, but its new slot is first filled
                            // with the parent's grain (zeros for a zeroed
                            // one), after QEMU's parent CID check.
                            self.cids.check_parent(b, self.parent_cid)?;
                            let grain_start = inner - inner % s.grain_bytes();
                            let mut slot = vec![0u8; s.grain_bytes() as usize];
                            if grain == Grain::Unallocated {
                                super::read_backing(Some(b), &mut slot, e.start + grain_start)?;
                            }
                            s.write_compressed_over(part, inner, &slot)?
                        } else {
                            // Refused: written already.
                            s.write_in_grain(part, inner)?
                        }
                    }
                    Some(b) => {
                        let grain = s.lookup(inner)?.0;
                        if matches!(grain, Grain::Unallocated | Grain::Zero) {
                            // QEMU checks the parent's CID before it
                            // allocates a grain in a child.
                            self.cids.check_parent(b, self.parent_cid)?;
                        }
                        if n < s.grain_bytes() && grain == Grain::Unallocated {
                            let grain_start = inner - inner % s.grain_bytes();
                            let len = s.grain_bytes().min(e.len - grain_start);
                            let unit = super::copy_on_write_unit(
                                b,
                                e.start + grain_start,
                                len,
                                part,
                                e.start + inner,
                            )?;
                            s.write_in_grain(&unit, grain_start)?
                        } else {
                            s.write_in_grain(part, inner)?
                        }
                    }
                    None => s.write_in_grain(part, inner)?,
                },
                Data::SeSparse(_) => return Err(read_only_sesparse()),
            }
            // QEMU puts a new CID into the descriptor once its first
            // write after the open has written its first piece.
            self.cids.after_write(&*self.storage, self.desc_offset)
        })
    }

    fn flush(&self) -> Result<()> {
        for e in &self.extents {
            match &e.data {
                Data::Flat { storage, .. } => storage.flush()?,
                Data::Sparse(s) => s.storage().flush()?,
                Data::SeSparse(_) => {}
            }
        }
        self.storage.flush()
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn host_file(&self) -> Option<&Arc<dyn Storage>> {
        // A monolithic sparse file holds its one extent itself; extents in
        // files of their own report offsets in those files.
        match self.extents.as_slice() {
            [only] if !only.separate => Some(&self.storage),
            _ => None,
        }
    }

    fn cluster_size(&self) -> Option<u64> {
        match &self.extents[0].data {
            Data::Sparse(s) => Some(s.grain_bytes()),
            Data::SeSparse(s) => Some(s.grain_bytes()),
            Data::Flat { .. } => None,
        }
    }

    fn compresses_writes(&self) -> bool {
        self.extents
            .iter()
            .any(|e| matches!(&e.data, Data::Sparse(s) if s.header().compressed()))
    }

    fn check(&self) -> Option<Result<CheckReport>> {
        Some(self.check_extents())
    }

    fn format_specific(&self) -> Option<InfoValue> {
        let extents = self
            .extents
            .iter()
            .map(|e| {
                let mut d = vec![
                    ("filename", InfoValue::Str(e.file_name.clone())),
                    (
                        "format",
                        InfoValue::Str(e.type_name.clone().unwrap_or_default()),
                    ),
                    ("virtual-size", InfoValue::UInt(e.len)),
                ];
                if let Data::Sparse(s) = &e.data {
                    if s.header().compressed() {
                        d.push(("compressed", InfoValue::Bool(true)));
                    }
                    d.push(("cluster-size", InfoValue::UInt(s.grain_bytes())));
                }
                if let Data::SeSparse(s) = &e.data {
                    d.push(("cluster-size", InfoValue::UInt(s.grain_bytes())));
                }
                InfoValue::Dict(d)
            })
            .collect();
        Some(InfoValue::Dict(vec![
            ("cid", InfoValue::UInt(self.cid.into())),
            ("parent-cid", InfoValue::UInt(self.parent_cid.into())),
            ("create-type", InfoValue::Str(self.create_type.clone())),
            ("extents", InfoValue::List(extents)),
        ]))
    }

    fn side_files(&self) -> Vec<(String, String, Arc<dyn Storage>)> {
        self.extents
            .iter()
            .enumerate()
            .filter(|(_, e)| e.separate)
            .map(|(i, e)| {
                let storage = match &e.data {
                    Data::Flat { storage, .. } => storage.clone(),
                    Data::Sparse(s) => s.storage().clone(),
                    Data::SeSparse(s) => s.storage().clone(),
                };
                (format!("extents.{i}"), e.file_name.clone(), storage)
            })
            .collect()
    }

    fn side_file_roles(&self) -> Vec<(String, bool)> {
        self.extents
            .iter()
            .filter(|e| e.separate)
            .map(|e| {
                let sparse = matches!(e.data, Data::Sparse(_) | Data::SeSparse(_));
                (e.file_name.clone(), sparse)
            })
            .collect()
    }

    fn backing_file(&self) -> Option<BackingFile> {
        self.backing_file.clone()
    }

    fn set_backing(&mut self, backing: Box<dyn BlockRead>) {
        self.backing = Some(backing);
    }
}

#[cfg(test)]
mod tests;
