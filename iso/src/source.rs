//! Where the image's bytes come from: positioned reads from a file or a
//! buffer in memory.

use std::os::unix::fs::FileExt;

/// A source of the image's bytes, read at absolute offsets.
pub trait ReadAt {
    /// The source's size in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// Fills `buf` from `offset`; a short source is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.checked_add(buf.len());
        match end.and_then(|end| self.get(start..end)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> std::io::Result<u64> {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> std::io::Result<u64> {
        (**self).size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::ReadAt;

    #[test]
    fn slices_read_inside_and_refuse_past_the_end() {
        let bytes = vec![1u8, 2, 3, 4];
        let mut two = [0u8; 2];
        bytes.read_exact_at(&mut two, 2).unwrap();
        assert_eq!(two, [3, 4]);
        assert!(bytes.read_exact_at(&mut two, 3).is_err());
        assert!(bytes.read_exact_at(&mut two, u64::MAX).is_err());
        assert_eq!(bytes.size().unwrap(), 4);
    }
}
