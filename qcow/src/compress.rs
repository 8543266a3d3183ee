//! Compressed cluster decoding: raw deflate ("zlib" in QEMU) and zstd.
//!
//! Decompression stops once a whole cluster has been produced: the stored
//! range is rounded to sectors and may hold the start of the next cluster's
//! data after ours.

use crate::error::{Error, Result};
use crate::header::CompressionType;

/// Decompresses `input` into `out`, which must be filled completely.
pub fn decompress(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
    host_offset: u64,
) -> Result<()> {
    let bad = |reason: String| Error::BadCompressedCluster {
        host_offset,
        reason,
    };
    match kind {
        CompressionType::Zlib => {
            let mut d = flate2::Decompress::new(false);
            let status = d
                .decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| bad(format!("deflate: {e}")))?;
            let produced = d.total_out() as usize;
            if produced != out.len() {
                return Err(bad(format!(
                    "deflate produced {produced} of {} bytes ({status:?})",
                    out.len()
                )));
            }
            Ok(())
        }
        CompressionType::Zstd => {
            let mut dctx = zstd::zstd_safe::DCtx::create();
            let mut inbuf = zstd::zstd_safe::InBuffer::around(input);
            let mut outbuf = zstd::zstd_safe::OutBuffer::around(&mut out[..]);
            loop {
                let before = (inbuf.pos(), outbuf.pos());
                let r = dctx
                    .decompress_stream(&mut outbuf, &mut inbuf)
                    .map_err(|code| {
                        bad(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
                    })?;
                if outbuf.pos() == outbuf.capacity() {
                    return Ok(());
                }
                if r == 0 || (inbuf.pos(), outbuf.pos()) == before {
                    return Err(bad(format!(
                        "zstd produced {} of {} bytes",
                        outbuf.pos(),
                        outbuf.capacity()
                    )));
                }
            }
        }
    }
}

/// Compresses one cluster; returns `None` when the result would not be
/// smaller than `max_len` (the caller then stores it uncompressed).
pub fn compress(kind: CompressionType, input: &[u8], max_len: usize) -> Result<Option<Vec<u8>>> {
    match kind {
        CompressionType::Zlib => {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            let mut out = vec![0u8; max_len];
            match c.compress(input, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => {
                    out.truncate(c.total_out() as usize);
                    Ok(Some(out))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(Error::Unsupported(format!("deflate: {e}"))),
            }
        }
        CompressionType::Zstd => {
            let mut out = vec![0u8; max_len];
            match zstd::bulk::compress_to_buffer(input, &mut out, 0) {
                Ok(n) if n < max_len => {
                    out.truncate(n);
                    Ok(Some(out))
                }
                _ => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_trailing_garbage() {
        let input: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut c = compress(kind, &input, input.len() - 1).unwrap().unwrap();
            c.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            let mut out = vec![0u8; input.len()];
            decompress(kind, &c, &mut out, 0).unwrap();
            assert_eq!(out, input);
            // Truncated input is an error, not a panic.
            let mut out = vec![0u8; input.len()];
            assert!(decompress(kind, &c[..c.len() / 2], &mut out, 0).is_err());
            assert!(decompress(kind, &[0xff; 100], &mut out, 0).is_err());
        }
    }
}
