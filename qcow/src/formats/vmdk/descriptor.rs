//! The VMDK text descriptor: parsed as QEMU parses it (the `createType`,
//! `CID` and `parentCID` values, extent lines `RW SECTORS TYPE "NAME"
//! [OFFSET]`, lines of other access modes skipped), and written as QEMU
//! writes it for new images.

use super::FORMAT;
use crate::error::Result;
use crate::formats::invalid;

/// Most bytes of a descriptor read (QEMU reads up to 1 MiB - 1).
pub const MAX_DESCRIPTOR: u64 = (1 << 20) - 1;
/// Most extents of one descriptor.
pub const MAX_EXTENTS: usize = 1024;

/// The kind of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// Raw data at an offset of a file (`FLAT`, `VMFS`).
    Flat,
    /// A hosted sparse file (`SPARSE`).
    Sparse,
    /// An SE sparse file (`SESPARSE`), read only.
    SeSparse,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// FLAT or SPARSE.
    pub kind: ExtentType,
    /// The type as written (shown by `img info`).
    pub type_name: String,
    /// Sectors of guest data.
    pub sectors: u64,
    /// The file name as written.
    pub file: String,
    /// FLAT: the first sector of the data in the file.
    pub flat_offset: u64,
}

/// A parsed descriptor. The CIDs are not among its fields: QEMU reads
/// them from the raw text, not from its lines (see `cid::read_cids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType`, if present.
    pub create_type: Option<String>,
    /// `parentFileNameHint`, if present.
    pub parent_hint: Option<String>,
    /// The RW extent lines, in order.
    pub extents: Vec<ExtentLine>,
}

/// The value of `key = "value"` or `key=value` on a line of its own.
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(key)?;
        let rest = rest.trim_start().strip_prefix('=')?;
        let rest = rest.trim();
        Some(
            rest.strip_prefix('"')
                .map(|r| r.split('"').next().unwrap_or(r))
                .unwrap_or(rest),
        )
    })
}

/// Parses one extent line; `Ok(None)` for lines QEMU skips.
fn extent_line(line: &str) -> Result<Option<ExtentLine>> {
    let mut words = line.split_whitespace();
    let (Some(access), Some(sectors), Some(type_name)) = (words.next(), words.next(), words.next())
    else {
        return Ok(None);
    };
    if access != "RW" {
        return Ok(None);
    }
    let Ok(sectors) = sectors.parse::<i64>() else {
        return Ok(None);
    };
    let Some(start) = line.find('"') else {
        return Ok(None);
    };
    let rest = &line[start + 1..];
    let Some(end) = rest.find(['"', '\n', '\r']) else {
        return Ok(None);
    };
    let file = rest[..end].to_string();
    let after = rest[end..].strip_prefix('"').unwrap_or("").trim();
    let offset = after.split_whitespace().next().map(|w| w.parse::<i64>());
    let bad = || invalid(FORMAT, "extent line", sectors as u64, "Invalid extent line");
    let (kind, flat_offset) = match type_name {
        "FLAT" => match offset {
            Some(Ok(o)) if o >= 0 => (ExtentType::Flat, o as u64),
            _ => return Err(bad()),
        },
        "VMFS" => match offset {
            None => (ExtentType::Flat, 0),
            Some(_) => return Err(bad()),
        },
        "SPARSE" | "VMFSSPARSE" => match offset {
            None => (ExtentType::Sparse, 0),
            Some(_) => return Err(bad()),
        },
        "SESPARSE" => match offset {
            None => (ExtentType::SeSparse, 0),
            Some(_) => return Err(bad()),
        },
        _ => return Ok(None),
    };
    if sectors <= 0 {
        return Ok(None);
    }
    Ok(Some(ExtentLine {
        kind,
        type_name: type_name.to_string(),
        sectors: sectors as u64,
        file,
        flat_offset,
    }))
}

impl Descriptor {
    /// Parses descriptor bytes as read from a file (already cut at
    /// [`MAX_DESCRIPTOR`] bytes). QEMU reads them as one C string, so the
    /// text ends at the first NUL byte: nothing after it is looked at.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Descriptor> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Self::parse(&String::from_utf8_lossy(&bytes[..end]))
    }

    /// Parses descriptor text (already cut at [`MAX_DESCRIPTOR`] bytes).
    pub fn parse(text: &str) -> Result<Descriptor> {
        let mut extents = Vec::new();
        for line in text.lines() {
            if let Some(extent) = extent_line(line)? {
                if extents.len() == MAX_EXTENTS {
                    return Err(invalid(
                        FORMAT,
                        "extents",
                        extents.len() as u64 + 1,
                        "too many extents",
                    ));
                }
                extents.push(extent);
            }
        }
        Ok(Descriptor {
            create_type: value(text, "createType").map(str::to_string),
            parent_hint: value(text, "parentFileNameHint").map(str::to_string),
            extents,
        })
    }
}

/// What a new descriptor records.
#[derive(Debug, Clone)]
pub struct NewDescriptor<'a> {
    /// `CID`.
    pub cid: u32,
    /// `createType`.
    pub create_type: &'a str,
    /// Extent lines without their newline.
    pub extent_lines: Vec<String>,
    /// `ddb.virtualHWVersion`.
    pub hw_version: &'a str,
    /// Guest size in bytes (for the geometry).
    pub size: u64,
    /// `ddb.adapterType`.
    pub adapter_type: &'a str,
    /// `ddb.toolsVersion`.
    pub tools_version: &'a str,
    /// The parent: its CID and the name for `parentFileNameHint`.
    pub parent: Option<(u32, &'a str)>,
}

impl NewDescriptor<'_> {
    /// The text, as QEMU 10 lays it out.
    pub fn render(&self) -> String {
        let heads: u64 = if self.adapter_type == "ide" { 16 } else { 255 };
        let cylinders = self.size / (63 * heads * 512);
        let mut extents = String::new();
        for line in &self.extent_lines {
            extents.push_str(line);
            extents.push('\n');
        }
        // QEMU puts the hint line where the blank line after createType is.
        let (parent_cid, parent_line) = match self.parent {
            Some((cid, name)) => (cid, format!("parentFileNameHint=\"{name}\"")),
            None => (u32::MAX, String::new()),
        };
        format!(
            "# Disk DescriptorFile\nversion=1\nCID={:x}\nparentCID={parent_cid:x}\n\
             createType=\"{}\"\n{parent_line}\n\
             # Extent description\n{extents}\n# The Disk Data Base\n#DDB\n\n\
             ddb.virtualHWVersion = \"{}\"\nddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"63\"\n\
             ddb.adapterType = \"{}\"\nddb.toolsVersion = \"{}\"\n",
            self.cid, self.create_type, self.hw_version, self.adapter_type, self.tools_version
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Disk DescriptorFile\nversion=1\nCID=2fc1881a\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n\
        RW 4194304 FLAT \"a-f001.vmdk\" 0\nRDONLY 10 FLAT \"ro.vmdk\" 0\n\
        RW 2097152 SPARSE \"a-s002.vmdk\"\nRW 8 VMFS \"v.vmdk\"\n\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_like_qemu() {
        let d = Descriptor::parse(TEXT).unwrap();
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file, "a-f001.vmdk");
        assert_eq!(d.extents[1].kind, ExtentType::Sparse);
        assert_eq!(d.extents[2].kind, ExtentType::Flat);
    }

    #[test]
    fn bad_extent_lines_are_refused() {
        assert!(Descriptor::parse("RW 10 FLAT \"x\"\n").is_err());
        assert!(Descriptor::parse("RW 10 FLAT \"x\" -5\n").is_err());
        assert!(Descriptor::parse("RW 10 SPARSE \"x\" 3\n").is_err());
        assert!(Descriptor::parse("RW 10 SESPARSE \"x\" 3\n").is_err());
        assert_eq!(
            Descriptor::parse("RW 10 SESPARSE \"x\"\n").unwrap().extents[0].kind,
            ExtentType::SeSparse
        );
        // Skipped as QEMU skips them.
        assert!(Descriptor::parse("RW 0 FLAT \"x\" 0\nRW 10 ZERO \"x\"\n")
            .unwrap()
            .extents
            .is_empty());
        let many = "RW 1 FLAT \"x\" 0\n".repeat(MAX_EXTENTS + 1);
        assert!(Descriptor::parse(&many).is_err());
    }

    #[test]
    fn bytes_end_at_the_first_nul() {
        let mut bytes = b"CID=1\nRW 10 FLAT \"a\" 0\n".to_vec();
        bytes.push(0);
        bytes.extend_from_slice(b"parentFileNameHint=\"p\"\nRW 10 FLAT \"x\"\n");
        let d = Descriptor::parse_bytes(&bytes).unwrap();
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.parent_hint, None);
    }

    #[test]
    fn renders_like_qemu() {
        let text = NewDescriptor {
            cid: 0x2fc1_881a,
            create_type: "monolithicFlat",
            extent_lines: vec!["RW 10240 FLAT \"m-flat.vmdk\" 0".into()],
            hw_version: "4",
            size: 5 << 20,
            adapter_type: "ide",
            tools_version: "2147483647",
            parent: None,
        }
        .render();
        assert!(text.contains(
            "CID=2fc1881a\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent"
        ));
        assert!(text.contains("ddb.geometry.cylinders = \"10\"\nddb.geometry.heads = \"16\""));
        assert_eq!(Descriptor::parse(&text).unwrap().extents.len(), 1);
        // QEMU's template prints both CIDs with %x: no zero padding.
        let child = NewDescriptor {
            cid: 0x1a,
            parent: Some((0xbc, "p.vmdk")),
            create_type: "monolithicSparse",
            extent_lines: vec!["RW 10240 SPARSE \"c.vmdk\"".into()],
            hw_version: "4",
            size: 5 << 20,
            adapter_type: "ide",
            tools_version: "2147483647",
        }
        .render();
        assert!(child.contains("\nCID=1a\nparentCID=bc\n"), "{child}");
    }
}
