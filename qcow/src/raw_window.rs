//! QEMU's raw driver with `offset` and `size` as a storage layer: a
//! window of bytes `offset..offset + size` of the storage beneath, seen
//! as storage of its own that starts at 0 (block/raw-format.c).
//!
//! As in QEMU, the window does not grow: a write that would go past its
//! end fails with `ENOSPC` (nothing of it is written), and resizing to any
//! other length fails. Reads past the end read as zeros, as our
//! [`Storage`] promises (QEMU fails them with `EINVAL`; the format code
//! never asks for bytes it has not allocated there).

use std::io;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Where a raw window lies in the storage beneath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First byte of the window in the storage beneath.
    pub offset: u64,
    /// Length of the window; `None` reaches to the end of the storage
    /// beneath (whose length may change).
    pub size: Option<u64>,
}

/// A window of another storage (see the module documentation).
pub struct RawWindow<S> {
    inner: S,
    window: Window,
}

impl<S: Storage> RawWindow<S> {
    /// The window `window` of `inner`, checked as QEMU's raw_apply_options
    /// checks it: the window must lie inside the storage, and a fixed size
    /// must be a multiple of 512 bytes.
    pub fn new(inner: S, window: Window) -> Result<RawWindow<S>> {
        let real = inner.len()?;
        if window.offset > real {
            return Err(Error::RawWindow {
                option: "offset",
                value: window.offset,
                reason: format!(
                    "Offset ({}) cannot be greater than size of the containing file ({real})",
                    window.offset
                ),
            });
        }
        if let Some(size) = window.size {
            if size > real - window.offset {
                return Err(Error::RawWindow {
                    option: "size",
                    value: size,
                    reason: format!(
                        "The sum of offset ({}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({real})",
                        window.offset
                    ),
                });
            }
            if size % 512 != 0 {
                return Err(Error::RawWindow {
                    option: "size",
                    value: size,
                    reason: "Specified size is not multiple of 512".into(),
                });
            }
        }
        Ok(RawWindow { inner, window })
    }

    /// The window's length now.
    fn window_len(&self) -> Result<u64> {
        match self.window.size {
            Some(size) => Ok(size),
            None => Ok(self.inner.len()?.saturating_sub(self.window.offset)),
        }
    }

    /// Fails a write of `len` bytes at `offset` that would leave a fixed
    /// window, as QEMU's raw_adjust_offset does.
    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if let Some(size) = self.window.size {
            if offset > size || len > size - offset {
                return Err(Error::io(
                    format!("write of {len} bytes at byte {offset} past the raw size {size}"),
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        Ok(())
    }
}

impl<S: Storage> Storage for RawWindow<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.window_len()?;
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            self.inner.read_at(head, self.window.offset + offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.inner.write_at(buf, self.window.offset + offset)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn len(&self) -> Result<u64> {
        self.window_len()
    }

    fn set_len(&self, len: u64) -> Result<()> {
        match self.window.size {
            Some(size) if size == len => Ok(()),
            Some(_) => Err(Error::Unsupported(
                "Cannot resize fixed-size raw disks".into(),
            )),
            None => self.inner.set_len(self.window.offset + len),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.window_len()?;
        let len = len.min(size.saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        self.inner.discard(self.window.offset + offset, len)
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.inner.allocate(self.window.offset + offset, len)
    }

    fn start_writeback(&self) -> Result<()> {
        self.inner.start_writeback()
    }

    fn data_extent(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        let size = self.window_len()?;
        if offset >= size || len == 0 {
            return Ok((false, len));
        }
        self.inner
            .data_extent(self.window.offset + offset, len.min(size - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn window(len: usize, offset: u64, size: Option<u64>) -> RawWindow<MemStorage> {
        let mem = MemStorage::new();
        let bytes: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
        mem.write_at(&bytes, 0).unwrap();
        RawWindow::new(mem, Window { offset, size }).unwrap()
    }

    #[test]
    fn reads_and_writes_land_inside_the_window() {
        let w = window(4096, 1024, Some(2048));
        assert_eq!(w.len().unwrap(), 2048);
        let mut buf = [0u8; 4];
        w.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [2; 4]);
        // Past the end reads as zeros, the part inside as the file.
        let mut buf = [9u8; 8];
        w.read_at(&mut buf, 2044).unwrap();
        assert_eq!(buf, [5, 5, 5, 5, 0, 0, 0, 0]);
        w.write_at(&[7; 512], 1536).unwrap();
        let mut buf = [0u8; 1];
        w.inner.read_at(&mut buf, 2560).unwrap();
        assert_eq!(buf, [7]);
    }

    #[test]
    fn a_write_past_a_fixed_size_fails_with_enospc_and_writes_nothing() {
        let w = window(4096, 0, Some(2048));
        let e = w.write_at(&[1; 1024], 1536).unwrap_err();
        let Error::Io { source, .. } = e else {
            panic!("not an I/O error: {e}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(w.inner.len().unwrap(), 4096);
        let mut buf = [0u8; 1];
        w.inner.read_at(&mut buf, 2048).unwrap();
        assert_eq!(buf, [4]);
        assert!(w.set_len(4096).is_err());
        assert!(w.set_len(2048).is_ok());
    }

    #[test]
    fn a_window_without_size_follows_the_file() {
        let w = window(4096, 512, None);
        assert_eq!(w.len().unwrap(), 3584);
        w.write_at(&[1; 512], 3584).unwrap();
        assert_eq!(w.len().unwrap(), 4096);
    }

    #[test]
    fn windows_outside_the_file_are_refused() {
        let mem = std::sync::Arc::new(MemStorage::new());
        mem.write_at(&[0; 1024], 0).unwrap();
        let at = |offset, size| RawWindow::new(mem.clone(), Window { offset, size }).is_ok();
        assert!(!at(2048, None));
        assert!(!at(512, Some(1024)));
        assert!(!at(0, Some(1000)));
        assert!(at(512, Some(512)));
    }
}
