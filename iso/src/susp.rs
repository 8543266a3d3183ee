//! The System Use Sharing Protocol (IEEE P1281) as far as Rock Ridge
//! names need it: the `SP` indicator in the root's `.` record, `CE`
//! continuation areas, `ST`, and Rock Ridge's `NM` (alternate name), `RE`
//! (a relocated directory, hidden where it was moved to) and `CL` (the
//! placeholder where a relocated directory belongs, naming its block).
//! `PL` (in a relocated directory's `..`) is not needed: `..` records are
//! never read.

use crate::{IsoError, Result, MAX_CONTINUATIONS};

/// The bytes to skip at the start of every system use area, if the root's
/// `.` record starts with an `SP` entry (SUSP is in use).
pub fn sp_skip(root_dot_system_use: &[u8]) -> Option<usize> {
    let sp = root_dot_system_use.get(..7)?;
    (sp[..2] == *b"SP" && sp[2] == 7 && sp[4] == 0xbe && sp[5] == 0xef).then(|| usize::from(sp[6]))
}

/// What a record's Rock Ridge entries say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RockRidge {
    /// The `NM` name, if any.
    pub name: Option<String>,
    /// `RE`: the directory was relocated here and is listed elsewhere.
    pub relocated: bool,
    /// `CL`: this record stands for a directory relocated to that block.
    pub child_link: Option<u32>,
}

/// A continuation area: block, offset inside it, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// Its logical block.
    pub block: u32,
    /// Byte offset in that block.
    pub offset: u32,
    /// Its length in bytes.
    pub length: u32,
}

/// Longest name an `NM` chain may build, in bytes (NAME_MAX).
const MAX_NAME_BYTES: usize = 255;

/// Reads the Rock Ridge entries of a system use area (after the `SP`
/// skip), following at most [`MAX_CONTINUATIONS`] `CE` areas through
/// `read_area`, which must bound the area it reads.
pub fn rock_ridge(
    system_use: &[u8],
    path: &str,
    mut read_area: impl FnMut(Continuation) -> Result<Vec<u8>>,
) -> Result<RockRidge> {
    let mut info = RockRidge::default();
    let mut name: Option<Vec<u8>> = None;
    let mut area = system_use.to_vec();
    let mut followed = 0;
    loop {
        let mut next = None;
        let mut pos = 0;
        while pos + 4 <= area.len() {
            let signature = [area[pos], area[pos + 1]];
            let length = usize::from(area[pos + 2]);
            if length < 4 || pos + length > area.len() {
                break; // padding or a torn entry: the area ends here
            }
            let entry = &area[pos..pos + length];
            match &signature {
                b"ST" => break,
                b"CE" if length >= 28 => {
                    let field = |at: usize| {
                        u32::from_le_bytes(entry[at..at + 4].try_into().expect("4 bytes"))
                    };
                    next = Some(Continuation {
                        block: field(4),
                        offset: field(12),
                        length: field(20),
                    });
                }
                b"NM" if length >= 5 => {
                    let flags = entry[4];
                    // CURRENT (2) and PARENT (4) name . and ..; keep the
                    // ISO name then.
                    if flags & 0x06 == 0 {
                        let part = name.get_or_insert_with(Vec::new);
                        if part.len() + entry[5..].len() > MAX_NAME_BYTES {
                            return Err(IsoError::BadRecord {
                                path: path.to_string(),
                                at: pos,
                                reason: format!(
                                    "Rock Ridge name longer than {MAX_NAME_BYTES} bytes"
                                ),
                            });
                        }
                        part.extend_from_slice(&entry[5..]);
                    }
                }
                b"RE" => info.relocated = true,
                b"CL" if length >= 12 => {
                    info.child_link =
                        Some(u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes")));
                }
                _ => {}
            }
            pos += length;
        }
        let Some(continuation) = next else { break };
        followed += 1;
        if followed > MAX_CONTINUATIONS {
            return Err(IsoError::BadRecord {
                path: path.to_string(),
                at: 0,
                reason: format!("more than {MAX_CONTINUATIONS} SUSP continuation areas"),
            });
        }
        area = read_area(continuation)?;
    }
    info.name = name
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(&n).into_owned());
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nm(flags: u8, text: &[u8]) -> Vec<u8> {
        let mut entry = vec![b'N', b'M', (5 + text.len()) as u8, 1, flags];
        entry.extend_from_slice(text);
        entry
    }

    fn ce(block: u32, offset: u32, length: u32) -> Vec<u8> {
        let mut entry = vec![b'C', b'E', 28, 1];
        for value in [block, offset, length] {
            entry.extend_from_slice(&value.to_le_bytes());
            entry.extend_from_slice(&value.to_be_bytes());
        }
        entry
    }

    #[test]
    fn finds_sp_and_its_skip() {
        assert_eq!(sp_skip(b"SP\x07\x01\xbe\xef\x00"), Some(0));
        assert_eq!(sp_skip(b"SP\x07\x01\xbe\xee\x00"), None);
        assert_eq!(sp_skip(b"SP"), None);
    }

    #[test]
    fn joins_nm_parts_across_a_continuation() {
        let mut area = nm(1, b"vmlin");
        area.extend(ce(30, 0, 10));
        let info = rock_ridge(&area, "/", |c| {
            assert_eq!(c.block, 30);
            Ok(nm(0, b"uz"))
        })
        .unwrap();
        assert_eq!(info.name.as_deref(), Some("vmlinuz"));
    }

    #[test]
    fn a_continuation_loop_ends_with_one_line() {
        let area = ce(30, 0, 28);
        let err = rock_ridge(&area, "/x", |_| Ok(ce(30, 0, 28))).unwrap_err();
        assert!(err.to_string().contains("continuation areas"), "{err}");
    }

    #[test]
    fn reads_a_child_link() {
        let mut area = nm(0, b"deep");
        area.extend_from_slice(b"CL\x0c\x01");
        area.extend_from_slice(&77u32.to_le_bytes());
        area.extend_from_slice(&77u32.to_be_bytes());
        let info = rock_ridge(&area, "/", |_| unreachable!()).unwrap();
        assert_eq!(info.child_link, Some(77));
        assert_eq!(info.name.as_deref(), Some("deep"));
    }

    #[test]
    fn torn_entries_end_the_area_and_dot_names_are_ignored() {
        let mut area = nm(2, b"");
        area.extend_from_slice(b"NM\xff\x01");
        assert_eq!(
            rock_ridge(&area, "/", |_| unreachable!()).unwrap(),
            RockRidge::default()
        );
    }
}
