//! Code kept in memory while the VMM runs (`--keep-resident CLIENT`): the
//! loadable segments of the VMM's own program and of its managing client
//! (`vm`, which runs once per command and is gone between commands) are
//! mapped and read in once, and locked where the process may lock
//! memory, so that a command on a running domain (a revert above all)
//! does not wait for code read back from storage.
//!
//! Why: a host that reclaims memory proactively (this one runs a DAMON
//! scheme paging out file pages no process maps after 60 s without
//! access) drops the client's code between commands, and a page of the
//! VMM's own code first run by a revert; each first fault then reads
//! from the disk (up to the read-ahead window, 8 MiB here) while the
//! guest waits. A mapped page is not such a page, and a locked one is
//! never reclaimed; QEMU's `-overcommit mem-lock=on` locks all of its
//! memory for the same reason. The pages are the page cache's own (one
//! copy, shared with every process running the same program).
//!
//! It is only a preference: where a file is not an ELF64 little-endian
//! program or cannot be mapped, nothing is kept of it and the VMM runs
//! as before. It prints nothing (a line in the VMM's log could land
//! after the line a failing start reports); `smaps` shows what is kept.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// ELF64's file header length.
const HEADER_LEN: usize = 64;
/// ELF64's program header length.
const PHDR_LEN: usize = 56;
/// The most program headers read (a program has about a dozen).
const MAX_SEGMENTS: usize = 64;
/// The most bytes kept of one file (a program's loadable segments; ours
/// are about 5 MiB).
pub const MAX_KEPT: u64 = 64 << 20;
/// A loadable segment's type.
const PT_LOAD: u32 = 1;

/// A file range: offset and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// What was kept of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Bytes mapped and read in.
    pub bytes: u64,
    /// Whether they are locked too.
    pub locked: bool,
}

fn invalid(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the program headers are: (offset, count), from the file header,
/// checked against `file_len` and [`MAX_SEGMENTS`].
pub fn program_headers(header: &[u8], file_len: u64) -> Result<(u64, usize), String> {
    if header.len() < HEADER_LEN || &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let offset = u64_at(header, 32);
    let entry_len = u16_at(header, 54) as usize;
    let count = u16_at(header, 56) as usize;
    if entry_len != PHDR_LEN {
        return Err(format!("program header size {entry_len}, not {PHDR_LEN}"));
    }
    if count > MAX_SEGMENTS {
        return Err(format!("{count} program headers (at most {MAX_SEGMENTS})"));
    }
    let end = offset.checked_add((count * PHDR_LEN) as u64);
    if end.is_none_or(|end| end > file_len) {
        return Err(format!(
            "program headers at {offset} past the file's end ({file_len})"
        ));
    }
    Ok((offset, count))
}

/// The file ranges of the loadable segments in `table` (the program
/// headers), each checked against `file_len`; their sum is at most
/// [`MAX_KEPT`].
pub fn loadable_ranges(table: &[u8], file_len: u64) -> Result<Vec<FileRange>, String> {
    let mut ranges = Vec::new();
    let mut total = 0u64;
    for entry in table.chunks_exact(PHDR_LEN) {
        if u32_at(entry, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(entry, 8);
        let len = u64_at(entry, 32);
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(format!(
                "a segment of {len} bytes at {offset} past the file's end ({file_len})"
            ));
        }
        total = total.saturating_add(len);
        if total > MAX_KEPT {
            return Err(format!("loadable segments over {MAX_KEPT} bytes"));
        }
        if len > 0 {
            ranges.push(FileRange { offset, len });
        }
    }
    Ok(ranges)
}

/// Maps the loadable segments of the program at `path` for the rest of
/// the process's life, reads them in and locks them where allowed.
pub fn keep(path: &Path) -> io::Result<Kept> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    let (table_at, count) = program_headers(&header, file_len).map_err(|e| invalid(path, e))?;
    let mut table = vec![0u8; count * PHDR_LEN];
    file.read_exact_at(&mut table, table_at)?;
    let ranges = loadable_ranges(&table, file_len).map_err(|e| invalid(path, e))?;
    let page = page_size();
    let mut kept = Kept {
        bytes: 0,
        locked: true,
    };
    for range in ranges {
        // Mapped from the page holding the segment's first byte.
        let start = range.offset / page * page;
        let len = (range.offset + range.len - start) as usize;
        // SAFETY: a new read-only shared mapping of `len` bytes of a file
        // we opened, at an address the kernel picks: it aliases no memory
        // of ours. MAP_POPULATE reads the pages in now. The mapping is
        // never unmapped nor touched through a reference: it only holds
        // the pages for the process's life (the descriptor may close).
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        kept.bytes += len as u64;
        // SAFETY: locks the pages of the mapping just made, which stays;
        // no memory is read or written.
        if unsafe { libc::mlock(at, len) } != 0 {
            kept.locked = false;
        }
    }
    Ok(kept)
}

fn page_size() -> u64 {
    // SAFETY: sysconf takes no memory.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// The environment variable that turns keeping off (`off`), to compare.
pub const SWITCH_ENV: &str = "VMM_KEEP_RESIDENT";

/// Keeps the VMM's own program and `client` resident from a thread of
/// its own (the VMM's start does not wait for it), unless [`SWITCH_ENV`]
/// is `off`.
pub fn keep_in_background(client: std::path::PathBuf) {
    if std::env::var_os(SWITCH_ENV).is_some_and(|v| v == "off") {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("resident".into())
        .spawn(move || {
            if let Ok(own) = std::env::current_exe() {
                let _ = keep(&own);
            }
            let _ = keep(&client);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(phoff: u64, entry_len: u16, count: u16) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[32..40].copy_from_slice(&phoff.to_le_bytes());
        h[54..56].copy_from_slice(&entry_len.to_le_bytes());
        h[56..58].copy_from_slice(&count.to_le_bytes());
        h
    }

    fn phdr(kind: u32, offset: u64, len: u64) -> Vec<u8> {
        let mut p = vec![0u8; PHDR_LEN];
        p[..4].copy_from_slice(&kind.to_le_bytes());
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[32..40].copy_from_slice(&len.to_le_bytes());
        p
    }

    #[test]
    fn headers_are_found_and_bad_ones_refused() {
        assert_eq!(program_headers(&header(64, 56, 3), 4096), Ok((64, 3)));
        assert!(program_headers(b"#!/bin/sh\n", 10).is_err());
        let mut be = header(64, 56, 3);
        be[5] = 2;
        assert!(program_headers(&be, 4096)
            .unwrap_err()
            .contains("little-endian"));
        assert!(program_headers(&header(64, 32, 3), 4096)
            .unwrap_err()
            .contains("size 32"));
        assert!(program_headers(&header(64, 56, 65), 1 << 20)
            .unwrap_err()
            .contains("65"));
        assert!(program_headers(&header(4000, 56, 3), 4096)
            .unwrap_err()
            .contains("past"));
        assert!(program_headers(&header(u64::MAX - 8, 56, 3), 4096).is_err());
    }

    #[test]
    fn only_loadable_segments_inside_the_file_are_kept() {
        let mut table = phdr(6, 64, 168); // PT_PHDR: not loaded
        table.extend(phdr(PT_LOAD, 0, 4000));
        table.extend(phdr(PT_LOAD, 4096, 0)); // empty (all .bss)
        table.extend(phdr(PT_LOAD, 8192, 100));
        assert_eq!(
            loadable_ranges(&table, 8292),
            Ok(vec![
                FileRange {
                    offset: 0,
                    len: 4000
                },
                FileRange {
                    offset: 8192,
                    len: 100
                }
            ])
        );
        assert!(loadable_ranges(&table, 8291).unwrap_err().contains("past"));
        let huge = phdr(PT_LOAD, 0, MAX_KEPT + 1);
        assert!(loadable_ranges(&huge, u64::MAX)
            .unwrap_err()
            .contains("over"));
        assert!(loadable_ranges(&phdr(PT_LOAD, u64::MAX, 2), u64::MAX).is_err());
    }

    #[test]
    fn the_test_program_itself_is_kept() {
        let own = std::env::current_exe().expect("the test binary");
        let kept = keep(&own).expect("kept");
        assert!(kept.bytes > 4096, "{kept:?}");
        let not_elf = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(not_elf.path(), vec![b'#'; 100]).expect("written");
        let e = keep(not_elf.path()).expect_err("not a program");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
