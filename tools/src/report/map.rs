//! The report of `img map`: extents of the guest address space with their
//! allocation status, merged and printed exactly as qemu-img 10 does.
//!
//! qemu-img probes the image in pieces (at most 1 GiB at a time), merges
//! each piece into the previous extent when [`MapEntry::mergeable`] allows,
//! and prints an extent once the next one cannot be merged. In human mode
//! it also rewrites the next extent to "zero, no data" whenever it carries
//! no data or reads as zeroes, so such extents coalesce further. The
//! streaming [`MapPrinter`] reproduces that loop; feed it the pieces in
//! order.

use std::fmt::Write as _;

use super::OutputFormat;

/// One extent (qemu-img's `MapEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset of the extent.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Backing-chain depth of the layer that provides the data (0: the
    /// image itself).
    pub depth: u64,
    /// Allocated somewhere in the chain.
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Has data on the host.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Host offset of the data, when it has a plain one.
    pub offset: Option<u64>,
    /// File holding the data (the "File" column of human output).
    pub filename: Option<String>,
}

impl MapEntry {
    /// qemu-img's `entry_mergeable`: `next` continues `self` when every
    /// flag, depth and file agree and host offsets are contiguous.
    pub fn mergeable(&self, next: &MapEntry) -> bool {
        if self.length == 0 {
            return false;
        }
        if self.zero != next.zero
            || self.data != next.data
            || self.compressed != next.compressed
            || self.depth != next.depth
            || self.present != next.present
            || self.filename.is_some() != next.filename.is_some()
            || self.offset.is_some() != next.offset.is_some()
        {
            return false;
        }
        if self.filename.is_some() && self.filename != next.filename {
            return false;
        }
        match (self.offset, next.offset) {
            (Some(offset), Some(next_offset)) => offset.wrapping_add(self.length) == next_offset,
            _ => true,
        }
    }

    /// The JSON object of one extent, as qemu-img prints it (one line, no
    /// separator).
    pub fn json(&self) -> String {
        let mut line = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
             \"data\": {}, \"compressed\": {}",
            self.start,
            self.length,
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed
        );
        if let Some(offset) = self.offset {
            let _ = write!(line, ", \"offset\": {offset}");
        }
        line.push('}');
        line
    }
}

/// `img map` cannot show an extent in human mode.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Data without a host offset (compressed, encrypted or in an external
    /// file): human mode gives up, exit 1.
    #[error("File contains external, encrypted or compressed clusters.")]
    NoOffset,
    /// Writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Streams `img map` output: construct, [`push`](MapPrinter::push) each
/// probed extent in order, then [`finish`](MapPrinter::finish).
pub struct MapPrinter<W: std::io::Write> {
    out: W,
    format: OutputFormat,
    current: MapEntry,
}

/// The human-mode header line.
pub const HUMAN_HEADER: &str = "Offset          Length          Mapped to       File\n";

impl<W: std::io::Write> MapPrinter<W> {
    /// Writes the header (`[` for JSON) and starts with an empty extent at
    /// `start_offset` (what JSON prints when nothing lies in the range).
    pub fn new(mut out: W, format: OutputFormat, start_offset: u64) -> Result<Self, MapError> {
        match format {
            OutputFormat::Json => out.write_all(b"[")?,
            OutputFormat::Human => out.write_all(HUMAN_HEADER.as_bytes())?,
        }
        Ok(Self {
            out,
            format,
            current: MapEntry {
                start: start_offset,
                ..MapEntry::default()
            },
        })
    }

    /// Adds the next probed extent (which must start where the previous
    /// one ended).
    pub fn push(&mut self, mut next: MapEntry) -> Result<(), MapError> {
        if self.current.mergeable(&next) {
            self.current.length += next.length;
            return Ok(());
        }
        if self.current.length > 0 {
            let current = std::mem::take(&mut self.current);
            self.dump(&current, Some(&mut next))?;
        }
        self.current = next;
        Ok(())
    }

    /// Prints the last extent and the closing `]` for JSON; returns the
    /// writer.
    pub fn finish(mut self) -> Result<W, MapError> {
        let current = std::mem::take(&mut self.current);
        self.dump(&current, None)?;
        if self.format == OutputFormat::Json {
            self.out.write_all(b"]\n")?;
        }
        Ok(self.out)
    }

    /// qemu-img's `dump_map_entry`.
    fn dump(&mut self, entry: &MapEntry, next: Option<&mut MapEntry>) -> Result<(), MapError> {
        match self.format {
            OutputFormat::Human => {
                if entry.data && entry.offset.is_none() {
                    return Err(MapError::NoOffset);
                }
                if entry.data && !entry.zero {
                    let line = format!(
                        "{:<16}{:<16}{:<16}{}\n",
                        c_alt_hex(entry.start),
                        c_alt_hex(entry.length),
                        c_alt_hex(entry.offset.unwrap_or(0)),
                        entry.filename.as_deref().unwrap_or("")
                    );
                    self.out.write_all(line.as_bytes())?;
                }
                if let Some(next) = next {
                    if !next.data || next.zero {
                        next.data = false;
                        next.zero = true;
                    }
                }
            }
            OutputFormat::Json => {
                self.out.write_all(entry.json().as_bytes())?;
                if next.is_some() {
                    self.out.write_all(b",\n")?;
                }
            }
        }
        Ok(())
    }
}

/// C's `%#x`: `0x` prefix except for zero.
fn c_alt_hex(value: u64) -> String {
    if value == 0 {
        "0".to_owned()
    } else {
        format!("{value:#x}")
    }
}

/// Renders a whole map at once (see [`MapPrinter`]): the text printed
/// and whether it completed. On error the text is what qemu-img had
/// printed before giving up (the human header, earlier extents).
pub fn render_map(
    entries: impl IntoIterator<Item = MapEntry>,
    format: OutputFormat,
    start_offset: u64,
) -> (String, Result<(), MapError>) {
    let mut buffer = Vec::new();
    let result = (|| {
        let mut printer = MapPrinter::new(&mut buffer, format, start_offset)?;
        for entry in entries {
            printer.push(entry)?;
        }
        printer.finish().map(|_| ())
    })();
    (String::from_utf8_lossy(&buffer).into_owned(), result)
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;
