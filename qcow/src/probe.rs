//! Format probing: which image format a file is in, decided as qemu-img
//! decides it when no format is given.
//!
//! QEMU reads the first [`PROBE_BUF_SIZE`] bytes of the file (zero-filled
//! past its end) and asks every block driver for a score; the highest wins
//! and raw, which scores 1, wins only when nothing else claims the file. An
//! empty file is raw without asking. Each `score_*` function below follows
//! the `*_probe` function of QEMU 10's driver of that format (block/*.c):
//! the same signature bytes, the same checks, the same score.
//!
//! [`Format`] names every format qemu-img probes; [`Format::readable`] says
//! which of them this crate opens (and as which [`crate::fs::Format`]). A
//! reader for another format plugs in there and in [`crate::fs`]; until then
//! a file probed as such a format is refused
//! ([`crate::Error::FormatNotReadable`]), never read as raw.

use crate::error::Result;
use crate::header::QCOW_MAGIC;
use crate::storage::Storage;

/// Bytes at the start of a file that probing looks at (QEMU's
/// `BLOCK_PROBE_BUF_SIZE`).
pub const PROBE_BUF_SIZE: usize = 2048;

/// The score of raw: the lowest, so any other match wins.
const RAW_SCORE: u32 = 1;
/// The score of a format recognised by its signature.
const MAGIC_SCORE: u32 = 100;
/// The score of the weak guesses (dmg by file name, cloop by its script
/// prefix): above raw, below any signature.
const WEAK_SCORE: u32 = 2;

/// Every image format qemu-img recognises when probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Raw: what nothing else claims.
    Raw,
    /// QCOW2 (`QFI\xfb`, version 2 or later).
    Qcow2,
    /// The original QCOW (`QFI\xfb`, version 1).
    Qcow,
    /// QED (`QED\0`).
    Qed,
    /// VirtualBox VDI (signature 0xbeda107f at byte 64).
    Vdi,
    /// VMware VMDK (`KDMV`, `COWD` or a text descriptor).
    Vmdk,
    /// Virtual PC VHD (`conectix` at the start of the file).
    Vpc,
    /// Hyper-V VHDX (`vhdxfile`).
    Vhdx,
    /// LUKS version 1 (`LUKS\xba\xbe`).
    Luks,
    /// Apple disk image (by the name's `.dmg` ending only).
    Dmg,
    /// Parallels (`WithoutFreeSpace` or `WithouFreSpacExt`, version 2).
    Parallels,
    /// Compressed loop (cloop 2.0's shell-script header).
    Cloop,
    /// Bochs growing redolog.
    Bochs,
}

impl Format {
    /// Every format, in the order ties are broken (the first wins).
    pub const ALL: [Format; 13] = [
        Format::Raw,
        Format::Qcow2,
        Format::Qcow,
        Format::Qed,
        Format::Vdi,
        Format::Vmdk,
        Format::Vpc,
        Format::Vhdx,
        Format::Luks,
        Format::Dmg,
        Format::Parallels,
        Format::Cloop,
        Format::Bochs,
    ];

    /// The format's name as qemu-img spells it (`-f` and `file format:`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow => "qcow",
            Format::Qed => "qed",
            Format::Vdi => "vdi",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
            Format::Luks => "luks",
            Format::Dmg => "dmg",
            Format::Parallels => "parallels",
            Format::Cloop => "cloop",
            Format::Bochs => "bochs",
        }
    }

    /// The format named `name` as qemu-img spells it, if qemu-img probes it.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The reader this crate opens the format with, or `None` for a format
    /// it cannot read yet. This is the one place a new reader plugs in.
    pub fn readable(self) -> Option<crate::fs::Format> {
        match self {
            Format::Raw => Some(crate::fs::Format::Raw),
            Format::Qcow2 => Some(crate::fs::Format::Qcow2),
            Format::Vpc => Some(crate::fs::Format::Vpc),
            Format::Vdi => Some(crate::fs::Format::Vdi),
            Format::Vmdk => Some(crate::fs::Format::Vmdk),
            Format::Qed => Some(crate::fs::Format::Qed),
            Format::Vhdx => Some(crate::fs::Format::Vhdx),
            Format::Bochs => Some(crate::fs::Format::Bochs),
            // A LUKS volume opens only with its key; without one, the
            // open says so as QEMU's does.
            Format::Luks => Some(crate::fs::Format::Luks),
            Format::Qcow | Format::Dmg | Format::Parallels | Format::Cloop => None,
        }
    }

    /// How strongly the first bytes of a file (`buf`, zero-filled past the
    /// file's end) and its name claim this format; 0 is not at all.
    pub fn score(self, buf: &[u8; PROBE_BUF_SIZE], filename: Option<&str>) -> u32 {
        let claims = match self {
            Format::Raw => return RAW_SCORE,
            Format::Qcow2 => qcow_version(buf) >= 2,
            Format::Qcow => qcow_version(buf) == 1,
            Format::Qed => buf[..4] == *b"QED\0",
            Format::Vdi => le32(buf, 64) == VDI_SIGNATURE,
            Format::Vmdk => is_vmdk(buf),
            Format::Vpc => buf[..8] == *b"conectix",
            Format::Vhdx => buf[..8] == *b"vhdxfile",
            Format::Luks => buf[..6] == *b"LUKS\xba\xbe" && be16(buf, 6) == 1,
            Format::Dmg => {
                return match filename {
                    Some(name) if name.len() > 4 && name.ends_with(".dmg") => WEAK_SCORE,
                    _ => 0,
                }
            }
            Format::Parallels => {
                (buf[..16] == *b"WithoutFreeSpace" || buf[..16] == *b"WithouFreSpacExt")
                    && le32(buf, 16) == 2
            }
            Format::Cloop => {
                return if buf.starts_with(CLOOP_V2_HEADER) {
                    WEAK_SCORE
                } else {
                    0
                }
            }
            Format::Bochs => is_bochs(buf),
        };
        if claims {
            MAGIC_SCORE
        } else {
            0
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// VDI's signature, a little-endian u32 after the 64-byte text.
const VDI_SIGNATURE: u32 = 0xbeda_107f;

/// The first lines of a cloop 2.0 image.
const CLOOP_V2_HEADER: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

fn le32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// The qcow version field, or 0 when the qcow magic is absent.
fn qcow_version(buf: &[u8]) -> u32 {
    if u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) == QCOW_MAGIC {
        u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])
    } else {
        0
    }
}

/// VMDK: a sparse extent's magic (`KDMV` for VMDK4, `COWD` for VMDK3), or a
/// text descriptor whose first line other than comments and blank lines is
/// `version=1`, `2` or `3`.
fn is_vmdk(buf: &[u8]) -> bool {
    if buf[..4] == *b"KDMV" || buf[..4] == *b"COWD" {
        return true;
    }
    let mut rest = buf;
    while let Some(&first) = rest.first() {
        match first {
            b'#' => {
                // A comment line: skip through its newline.
                let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                rest = &rest[(end + 1).min(rest.len())..];
            }
            b' ' => {
                // Only blank lines (spaces, maybe a '\r') may come before
                // the version line.
                let spaces = rest.iter().take_while(|&&b| b == b' ').count();
                rest = &rest[spaces..];
                if rest.first() == Some(&b'\r') {
                    rest = &rest[1..];
                }
                if rest.first() != Some(&b'\n') {
                    return false;
                }
                rest = &rest[1..];
            }
            _ => {
                return [b"1", b"2", b"3"].iter().any(|v| {
                    let line = |end: &[u8]| [b"version=".as_slice(), v.as_slice(), end].concat();
                    rest.starts_with(&line(b"\n")) || rest.starts_with(&line(b"\r\n"))
                });
            }
        }
    }
    false
}

/// Bochs: the magic, type and subtype strings (each NUL-terminated in its
/// field) and header version 1 or 2.
fn is_bochs(buf: &[u8]) -> bool {
    let field_is =
        |at: usize, text: &[u8]| buf[at..].starts_with(text) && buf[at + text.len()] == 0;
    let version = le32(buf, 64);
    field_is(0, b"Bochs Virtual HD Image")
        && field_is(32, b"Redolog")
        && field_is(48, b"Growing")
        && (version == 0x0002_0000 || version == 0x0001_0000)
}

/// The format qemu-img would probe for a file of `len` bytes starting with
/// `buf` (zero-filled past the end) and named `filename`.
pub fn probe_bytes(buf: &[u8; PROBE_BUF_SIZE], len: u64, filename: Option<&str>) -> Format {
    if len == 0 {
        return Format::Raw;
    }
    let mut best = (Format::Raw, 0);
    for format in Format::ALL {
        let score = format.score(buf, filename);
        if score > best.1 {
            best = (format, score);
        }
    }
    best.0
}

/// Probes the format of a file, as qemu-img does when no format is given.
/// `filename` is the name the file was opened by (dmg is guessed by name).
pub fn probe_storage(storage: &dyn Storage, filename: Option<&str>) -> Result<Format> {
    let len = storage.len()?;
    let mut buf = [0u8; PROBE_BUF_SIZE];
    let head = len.min(PROBE_BUF_SIZE as u64) as usize;
    storage.read_at(&mut buf[..head], 0)?;
    Ok(probe_bytes(&buf, len, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf_with(parts: &[(usize, &[u8])]) -> [u8; PROBE_BUF_SIZE] {
        let mut buf = [0u8; PROBE_BUF_SIZE];
        for (at, bytes) in parts {
            buf[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        buf
    }

    fn probe(parts: &[(usize, &[u8])]) -> Format {
        probe_bytes(&buf_with(parts), 4096, Some("disk.img"))
    }

    #[test]
    fn signatures() {
        assert_eq!(probe(&[(0, b"QFI\xfb\0\0\0\x03")]), Format::Qcow2);
        assert_eq!(probe(&[(0, b"QFI\xfb\0\0\0\x02")]), Format::Qcow2);
        assert_eq!(probe(&[(0, b"QFI\xfb\0\0\0\x09")]), Format::Qcow2);
        assert_eq!(probe(&[(0, b"QFI\xfb\0\0\0\x01")]), Format::Qcow);
        // Version 0 is claimed by neither qcow driver.
        assert_eq!(probe(&[(0, b"QFI\xfb\0\0\0\0")]), Format::Raw);
        assert_eq!(probe(&[(0, b"QED\0")]), Format::Qed);
        assert_eq!(probe(&[(64, &0xbeda_107fu32.to_le_bytes())]), Format::Vdi);
        assert_eq!(probe(&[(0, b"KDMV")]), Format::Vmdk);
        assert_eq!(probe(&[(0, b"COWD")]), Format::Vmdk);
        assert_eq!(probe(&[(0, b"conectix")]), Format::Vpc);
        assert_eq!(probe(&[(0, b"vhdxfile")]), Format::Vhdx);
        assert_eq!(probe(&[(0, b"LUKS\xba\xbe\0\x01")]), Format::Luks);
        // LUKS2 is not probed by QEMU 10.
        assert_eq!(probe(&[(0, b"LUKS\xba\xbe\0\x02")]), Format::Raw);
        assert_eq!(
            probe(&[(0, b"WithoutFreeSpace"), (16, &[2, 0, 0, 0])]),
            Format::Parallels
        );
        assert_eq!(
            probe(&[(0, b"WithouFreSpacExt"), (16, &[2, 0, 0, 0])]),
            Format::Parallels
        );
        assert_eq!(
            probe(&[(0, b"WithouFreSpacExt"), (16, &[3, 0, 0, 0])]),
            Format::Raw
        );
        assert_eq!(probe(&[(0, CLOOP_V2_HEADER)]), Format::Cloop);
        let bochs = [
            (0, b"Bochs Virtual HD Image".as_slice()),
            (32, b"Redolog"),
            (48, b"Growing"),
            (64, &[0, 0, 2, 0]),
        ];
        assert_eq!(probe(&bochs), Format::Bochs);
        let mut not_bochs = bochs;
        not_bochs[2] = (48, b"Growing!");
        assert_eq!(probe(&not_bochs), Format::Raw);
    }

    #[test]
    fn vmdk_descriptor_text() {
        let text = b"# Disk DescriptorFile\n   \n\nversion=1\nCID=ffffffff\n";
        // A blank line that is empty (not spaces) is not skipped by QEMU.
        assert_eq!(probe(&[(0, text)]), Format::Raw);
        let text = b"# Disk DescriptorFile\n   \r\nversion=2\r\nCID=ffffffff\n";
        assert_eq!(probe(&[(0, text)]), Format::Vmdk);
        assert_eq!(probe(&[(0, b"version=3\n")]), Format::Vmdk);
        assert_eq!(probe(&[(0, b"version=4\n")]), Format::Raw);
        assert_eq!(probe(&[(0, b"  x\nversion=1\n")]), Format::Raw);
    }

    #[test]
    fn dmg_by_name_and_empty_files() {
        let zeros = [0u8; PROBE_BUF_SIZE];
        assert_eq!(probe_bytes(&zeros, 512, Some("a.dmg")), Format::Dmg);
        assert_eq!(probe_bytes(&zeros, 512, Some(".dmg")), Format::Raw);
        assert_eq!(probe_bytes(&zeros, 512, None), Format::Raw);
        // A signature beats the name.
        let vmdk = buf_with(&[(0, b"KDMV")]);
        assert_eq!(probe_bytes(&vmdk, 512, Some("a.dmg")), Format::Vmdk);
        // An empty file is raw whatever its name.
        assert_eq!(probe_bytes(&zeros, 0, Some("a.dmg")), Format::Raw);
    }

    #[test]
    fn names_round_trip_and_readers() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::Qcow2.readable(), Some(crate::fs::Format::Qcow2));
        assert_eq!(Format::Vmdk.readable(), Some(crate::fs::Format::Vmdk));
        assert_eq!(Format::Parallels.readable(), None);
    }

    #[test]
    fn probes_storage_shorter_than_the_buffer() {
        let storage = crate::MemStorage::new();
        storage.write_at(b"vhdxfile", 0).unwrap();
        assert_eq!(probe_storage(&storage, None).unwrap(), Format::Vhdx);
        let empty = crate::MemStorage::new();
        assert_eq!(probe_storage(&empty, None).unwrap(), Format::Raw);
    }
}
