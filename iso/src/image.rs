//! An opened image: its descriptors, the tree whose names it reads
//! (Rock Ridge, else Joliet, else plain ISO 9660), directories, path
//! lookup, bounded whole-tree walks and file reads.

use std::collections::HashSet;

use crate::descriptor::{self, Descriptor, NameKind, VolumeDescriptor, FIRST_SECTOR, SECTOR};
use crate::record::{self, Record, FLAG_MULTI_EXTENT};
use crate::source::ReadAt;
use crate::susp::{self, Continuation};
use crate::{
    IsoError, Result, MAX_DEPTH, MAX_DESCRIPTORS, MAX_DIR_BYTES, MAX_DIR_ENTRIES, MAX_FILE_EXTENTS,
    MAX_LISTING_BYTES, MAX_WALK_ENTRIES,
};

/// One contiguous run of a file's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Its first logical block.
    pub block: u32,
    /// Its length in bytes.
    pub length: u32,
}

/// A file or directory of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (Rock Ridge, Joliet or ISO 9660 without the version).
    pub name: String,
    /// Its path from the root, `/`-separated, starting with `/`.
    pub path: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Its size in bytes (the extents' lengths together).
    pub size: u64,
    /// Where its data lies, in order.
    pub extents: Vec<Extent>,
}

/// An ISO 9660 image opened for reading.
#[derive(Debug)]
pub struct IsoImage<R> {
    source: R,
    image_size: u64,
    primary: VolumeDescriptor,
    joliet: Option<VolumeDescriptor>,
    /// Which tree names are read from.
    names: Names,
}

/// Where names come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// The primary tree's Rock Ridge `NM` entries (SUSP skip bytes).
    RockRidge(usize),
    /// The Joliet tree.
    Joliet,
    /// The primary tree's ISO 9660 identifiers.
    Iso,
}

impl<R: ReadAt> IsoImage<R> {
    /// Reads the volume descriptors and finds how names are stored.
    pub fn open(source: R) -> Result<Self> {
        let image_size = source.size().map_err(|e| IsoError::Io {
            offset: 0,
            length: 0,
            source: e,
        })?;
        if image_size < (FIRST_SECTOR + 1) * SECTOR as u64 {
            return Err(IsoError::TooSmall { size: image_size });
        }
        let mut primary = None;
        let mut joliet = None;
        let mut terminated = false;
        for index in 0..MAX_DESCRIPTORS as u64 {
            let sector = FIRST_SECTOR + index;
            if (sector + 1) * SECTOR as u64 > image_size {
                return Err(IsoError::NoDescriptor { sector });
            }
            let mut bytes = Box::new([0u8; SECTOR]);
            read(&source, &mut bytes[..], sector * SECTOR as u64)?;
            match descriptor::parse(&bytes, sector)? {
                Descriptor::Primary(vd) => {
                    primary.get_or_insert(vd);
                }
                Descriptor::Joliet(vd) => {
                    joliet.get_or_insert(vd);
                }
                Descriptor::Terminator => {
                    terminated = true;
                    break;
                }
                Descriptor::Other => {}
            }
        }
        if !terminated {
            return Err(IsoError::TooManyDescriptors {
                max: MAX_DESCRIPTORS,
            });
        }
        let primary = primary.ok_or(IsoError::NoPrimary)?;
        let mut image = IsoImage {
            source,
            image_size,
            primary,
            joliet,
            names: Names::Iso,
        };
        image.names = image.find_names()?;
        Ok(image)
    }

    /// Rock Ridge when the root's `.` record carries SUSP's `SP`, else
    /// Joliet when there is a Joliet descriptor, else ISO 9660.
    fn find_names(&self) -> Result<Names> {
        let root = self.root_of(&self.primary)?;
        let first = self.directory_bytes(&root)?;
        if let Ok(dot) = record::parse(&first) {
            if let Some(skip) = susp::sp_skip(dot.system_use) {
                return Ok(Names::RockRidge(skip));
            }
        }
        Ok(if self.joliet.is_some() {
            Names::Joliet
        } else {
            Names::Iso
        })
    }

    /// The primary volume descriptor.
    pub fn primary(&self) -> &VolumeDescriptor {
        &self.primary
    }

    /// The volume identifier (the primary descriptor's).
    pub fn volume_id(&self) -> &str {
        &self.primary.volume_id
    }

    /// Whether names come from Rock Ridge entries.
    pub fn has_rock_ridge(&self) -> bool {
        matches!(self.names, Names::RockRidge(_))
    }

    /// Which naming the tree being read uses (Joliet only when there is
    /// no Rock Ridge).
    pub fn name_kind(&self) -> NameKind {
        match self.names {
            Names::Joliet => NameKind::Joliet,
            _ => NameKind::Iso,
        }
    }

    fn block_size(&self) -> u64 {
        u64::from(self.primary.block_size)
    }

    fn root_of(&self, vd: &VolumeDescriptor) -> Result<Entry> {
        let rec = record::parse(&vd.root_record).map_err(|reason| IsoError::BadRecord {
            path: "/".to_string(),
            at: 0,
            reason,
        })?;
        Ok(Entry {
            name: String::new(),
            path: "/".to_string(),
            is_dir: true,
            size: u64::from(rec.data_length),
            extents: vec![Extent {
                block: rec.data_block,
                length: rec.data_length,
            }],
        })
    }

    /// The root directory of the tree names are read from.
    pub fn root(&self) -> Result<Entry> {
        match (&self.names, &self.joliet) {
            (Names::Joliet, Some(joliet)) => self.root_of(joliet),
            _ => self.root_of(&self.primary),
        }
    }

    /// Checks that `extent` lies inside the image and returns its byte
    /// offset.
    fn extent_offset(&self, extent: Extent, what: &'static str) -> Result<u64> {
        let offset = u64::from(extent.block) * self.block_size();
        if offset + u64::from(extent.length) > self.image_size {
            return Err(IsoError::ExtentPastEnd {
                what,
                block: extent.block,
                length: u64::from(extent.length),
                image_size: self.image_size,
            });
        }
        Ok(offset)
    }

    fn directory_bytes(&self, dir: &Entry) -> Result<Vec<u8>> {
        if !dir.is_dir {
            return Err(IsoError::WrongKind {
                path: dir.path.clone(),
                expected: "directory",
            });
        }
        if dir.size > MAX_DIR_BYTES {
            return Err(IsoError::DirectoryTooLarge {
                path: dir.path.clone(),
                bytes: dir.size,
                max: MAX_DIR_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(dir.size as usize);
        for extent in &dir.extents {
            let offset = self.extent_offset(*extent, "directory")?;
            let start = bytes.len();
            bytes.resize(start + extent.length as usize, 0);
            read(&self.source, &mut bytes[start..], offset)?;
        }
        Ok(bytes)
    }

    /// Lists a directory (without `.` and `..`); records of a
    /// multi-extent file become one entry.
    pub fn read_dir(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let bytes = self.directory_bytes(dir)?;
        let block_size = self.block_size() as usize;
        let mut entries: Vec<Entry> = Vec::new();
        let mut continuing = false;
        let mut records = 0usize;
        let mut listing_bytes = 0usize;
        let mut pos = 0usize;
        while pos < bytes.len() {
            if bytes[pos] == 0 {
                // Records never cross a block: the rest is padding.
                pos = (pos / block_size + 1) * block_size;
                continue;
            }
            let bad = |reason: String| IsoError::BadRecord {
                path: dir.path.clone(),
                at: pos,
                reason,
            };
            let rec = record::parse(&bytes[pos..]).map_err(bad)?;
            records += 1;
            if records > MAX_DIR_ENTRIES {
                return Err(IsoError::TooManyEntries {
                    path: dir.path.clone(),
                    max: MAX_DIR_ENTRIES,
                });
            }
            pos += rec.length;
            if rec.is_dot() {
                continue;
            }
            let extent = Extent {
                block: rec.data_block,
                length: rec.data_length,
            };
            if continuing {
                let last = entries
                    .last_mut()
                    .expect("a continuing file has a first record");
                if last.extents.len() >= MAX_FILE_EXTENTS {
                    return Err(IsoError::TooManyExtents {
                        path: last.path.clone(),
                        max: MAX_FILE_EXTENTS,
                    });
                }
                last.extents.push(extent);
                last.size += u64::from(rec.data_length);
                continuing = rec.flags & FLAG_MULTI_EXTENT != 0;
                continue;
            }
            continuing = rec.flags & FLAG_MULTI_EXTENT != 0;
            let Some((name, child_link)) = self.entry_name(&rec, &dir.path)? else {
                continuing = false;
                continue;
            };
            listing_bytes += dir.path.len() + 2 * name.len() + 1;
            if listing_bytes > MAX_LISTING_BYTES {
                return Err(IsoError::ListingTooLarge {
                    path: dir.path.clone(),
                    max: MAX_LISTING_BYTES,
                });
            }
            let path = if dir.path == "/" {
                format!("/{name}")
            } else {
                format!("{}/{name}", dir.path)
            };
            if let Some(block) = child_link {
                // A relocated directory: its placeholder is a file here,
                // the directory itself lies at the linked block.
                continuing = false;
                let moved = self.relocated_dir(block, &path)?;
                entries.push(Entry {
                    name,
                    path,
                    is_dir: true,
                    size: u64::from(moved.length),
                    extents: vec![moved],
                });
                continue;
            }
            entries.push(Entry {
                name,
                path,
                is_dir: rec.is_dir(),
                size: u64::from(rec.data_length),
                extents: vec![extent],
            });
        }
        Ok(entries)
    }

    /// A record's name in the tree's naming and, for a Rock Ridge `CL`
    /// placeholder, the block its relocated directory lies at; None for a
    /// record Rock Ridge hides (a relocated directory, `RE`, reached
    /// through its placeholder instead).
    fn entry_name(
        &self,
        rec: &Record<'_>,
        dir_path: &str,
    ) -> Result<Option<(String, Option<u32>)>> {
        let iso = || record::iso_name(&String::from_utf8_lossy(rec.name));
        match self.names {
            Names::Iso => Ok(Some((iso(), None))),
            Names::Joliet => Ok(Some((record::iso_name(&descriptor::ucs2(rec.name)), None))),
            Names::RockRidge(skip) => {
                let area = rec.system_use.get(skip..).unwrap_or(&[]);
                let info = susp::rock_ridge(area, dir_path, |c| self.continuation(c, dir_path))?;
                if info.relocated {
                    return Ok(None);
                }
                Ok(Some((info.name.unwrap_or_else(iso), info.child_link)))
            }
        }
    }

    /// The extent of the directory a `CL` entry at `path` links to: the
    /// linked block must start with that directory's own `.` record.
    /// Loops through links are caught as any other directory loop (by
    /// [`IsoImage::walk`]'s set of read extents and the depth limit).
    fn relocated_dir(&self, block: u32, path: &str) -> Result<Extent> {
        let first = Extent {
            block,
            length: self.primary.block_size,
        };
        let offset = self.extent_offset(first, "relocated directory")?;
        let mut bytes = vec![0u8; self.primary.block_size as usize];
        read(&self.source, &mut bytes, offset)?;
        let bad = |reason: String| IsoError::BadRecord {
            path: path.to_string(),
            at: 0,
            reason,
        };
        let dot = record::parse(&bytes)
            .map_err(|reason| bad(format!("Rock Ridge CL to block {block}: {reason}")))?;
        if !dot.is_dot() || !dot.is_dir() || dot.data_block != block {
            return Err(bad(format!(
                "Rock Ridge CL to block {block}, which does not start a directory"
            )));
        }
        Ok(Extent {
            block,
            length: dot.data_length,
        })
    }

    fn continuation(&self, c: Continuation, path: &str) -> Result<Vec<u8>> {
        if u64::from(c.offset) + u64::from(c.length) > self.block_size() {
            return Err(IsoError::BadRecord {
                path: path.to_string(),
                at: 0,
                reason: format!(
                    "SUSP continuation of {} bytes at offset {} leaves its block",
                    c.length, c.offset
                ),
            });
        }
        let offset = self.extent_offset(
            Extent {
                block: c.block,
                length: c.offset + c.length,
            },
            "SUSP continuation area",
        )?;
        let mut bytes = vec![0u8; c.length as usize];
        read(&self.source, &mut bytes, offset + u64::from(c.offset))?;
        Ok(bytes)
    }

    /// Finds `path` (`/`-separated, from the root). A component matches
    /// exactly, else without regard to ASCII case (ISO 9660 names are
    /// upper case, configurations often name them in lower case).
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>> {
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if components.len() > MAX_DEPTH {
            return Err(IsoError::TooDeep {
                path: path.chars().take(200).collect(),
                max: MAX_DEPTH,
            });
        }
        let mut current = self.root()?;
        for component in components {
            if !current.is_dir {
                return Ok(None);
            }
            let entries = self.read_dir(&current)?;
            let found = entries
                .iter()
                .position(|e| e.name == component)
                .or_else(|| {
                    entries
                        .iter()
                        .position(|e| e.name.eq_ignore_ascii_case(component))
                });
            match found {
                Some(index) => current = entries.into_iter().nth(index).expect("index found above"),
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Visits every entry under the root, depth first, each directory
    /// extent read once: a directory met again is
    /// [`IsoError::DirectoryLoop`]; deeper than [`MAX_DEPTH`] or more than
    /// [`MAX_WALK_ENTRIES`] entries is an error too.
    pub fn walk(&self, mut visit: impl FnMut(&Entry)) -> Result<()> {
        let root = self.root()?;
        let mut seen: HashSet<u32> = HashSet::new();
        seen.insert(root.extents[0].block);
        let mut stack = vec![(root, 0usize)];
        let mut count = 0usize;
        while let Some((dir, depth)) = stack.pop() {
            for entry in self.read_dir(&dir)? {
                count += 1;
                if count > MAX_WALK_ENTRIES {
                    return Err(IsoError::TooManyWalkEntries {
                        max: MAX_WALK_ENTRIES,
                    });
                }
                visit(&entry);
                if entry.is_dir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(IsoError::TooDeep {
                            path: entry.path,
                            max: MAX_DEPTH,
                        });
                    }
                    if !seen.insert(entry.extents[0].block) {
                        return Err(IsoError::DirectoryLoop {
                            block: entry.extents[0].block,
                            path: entry.path,
                        });
                    }
                    stack.push((entry, depth + 1));
                }
            }
        }
        Ok(())
    }

    /// Reads a whole file of at most `max_bytes`.
    pub fn read_file(&self, entry: &Entry, max_bytes: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.copy_file(entry, &mut bytes, max_bytes)?;
        Ok(bytes)
    }

    /// Copies a file of at most `max_bytes` into `out`, 1 MiB at a time;
    /// returns its size.
    pub fn copy_file(
        &self,
        entry: &Entry,
        out: &mut impl std::io::Write,
        max_bytes: u64,
    ) -> Result<u64> {
        if entry.is_dir {
            return Err(IsoError::WrongKind {
                path: entry.path.clone(),
                expected: "file",
            });
        }
        if entry.size > max_bytes {
            return Err(IsoError::FileTooLarge {
                path: entry.path.clone(),
                size: entry.size,
                max: max_bytes,
            });
        }
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; entry.size.min(CHUNK) as usize];
        for extent in &entry.extents {
            let offset = self.extent_offset(*extent, "file")?;
            let mut done = 0u64;
            while done < u64::from(extent.length) {
                let n = (u64::from(extent.length) - done).min(CHUNK) as usize;
                read(&self.source, &mut buf[..n], offset + done)?;
                out.write_all(&buf[..n]).map_err(|e| IsoError::Io {
                    offset: offset + done,
                    length: n,
                    source: e,
                })?;
                done += n as u64;
            }
        }
        Ok(entry.size)
    }
}

fn read<R: ReadAt + ?Sized>(source: &R, buf: &mut [u8], offset: u64) -> Result<()> {
    source.read_exact_at(buf, offset).map_err(|e| IsoError::Io {
        offset,
        length: buf.len(),
        source: e,
    })
}
