//! Compressed cluster decoding: raw deflate ("zlib" in QEMU) and zstd.
//!
//! Decompression stops once a whole cluster has been produced: the stored
//! range is rounded to sectors and may hold the start of the next cluster's
//! data after ours.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::header::CompressionType;

/// QEMU's deflate settings for a cluster: raw deflate, default level, a
/// 4 KiB window and memory level 9.
const QEMU_ZLIB: zlib_rs::DeflateConfig = zlib_rs::DeflateConfig {
    level: 6,
    method: zlib_rs::Method::Deflated,
    window_bits: -12,
    mem_level: 9,
    strategy: zlib_rs::Strategy::Default,
};

thread_local! {
    /// Each thread's deflate stream, reset for every cluster: setting one
    /// up (and freeing it) for each cluster cost more than many small
    /// clusters take to compress. A convert worker keeps one for its life.
    static ZLIB: RefCell<Option<zlib_rs::Deflate>> = const { RefCell::new(None) };
    /// Each thread's zstd context, kept for the same reason.
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

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

/// Order-0 entropy, in bits per byte, at or above which a cluster is not
/// tried unless [`has_repeats`] finds repeated strings: byte frequencies
/// this flat leave Huffman coding under 0.7% to gain, so only matches
/// could shrink it, and compressed or encrypted files and random bytes
/// (7.997 for a 64 KiB cluster) have none. Text is around 4.5.
pub const INCOMPRESSIBLE_ENTROPY: f64 = 7.95;

/// Bytes looked at in each of the three places [`has_repeats`] probes.
const PROBE_LEN: usize = 4096;

/// Repeated 4-byte strings [`has_repeats`] must find.
const PROBE_MATCHES: u32 = 16;

/// Whether `input` repeats 4-byte strings within deflate's 4 KiB window,
/// judged from three 4 KiB samples (start, middle, end): a few tens of
/// microseconds instead of the milliseconds compressing takes. Random
/// bytes repeat a 4-byte string with odds of about 2^-20 per sample.
pub fn has_repeats(input: &[u8]) -> bool {
    let word = |i: usize| u32::from_le_bytes(input[i..i + 4].try_into().expect("4 bytes"));
    let mut table = vec![0u32; 4096];
    let mut matches = 0u32;
    let mid = input.len() / 2;
    let starts = [
        0,
        mid.saturating_sub(PROBE_LEN / 2),
        input.len().saturating_sub(PROBE_LEN),
    ];
    for (k, &start) in starts.iter().enumerate() {
        let end = (start + PROBE_LEN).min(input.len());
        if k > 0 && start < starts[k - 1] + PROBE_LEN {
            // A short input: the samples overlap; one is enough.
            break;
        }
        table.fill(0);
        for i in start..end.saturating_sub(3) {
            let w = word(i);
            let h = (w.wrapping_mul(0x9e37_79b1) >> 20) as usize;
            let prev = table[h];
            if prev != 0 && word(prev as usize - 1) == w {
                matches += 1;
                if matches >= PROBE_MATCHES {
                    return true;
                }
            }
            table[h] = i as u32 + 1;
        }
    }
    false
}

/// The order-0 entropy of `input` in bits per byte (8.0 for uniformly
/// distributed bytes, 0.0 for one repeated byte).
pub fn byte_entropy(input: &[u8]) -> f64 {
    if input.is_empty() {
        return 0.0;
    }
    // Four tables so that runs of one byte value do not serialise on one
    // counter.
    let mut counts = [[0u32; 256]; 4];
    let mut chunks = input.chunks_exact(4);
    for c in &mut chunks {
        counts[0][c[0] as usize] += 1;
        counts[1][c[1] as usize] += 1;
        counts[2][c[2] as usize] += 1;
        counts[3][c[3] as usize] += 1;
    }
    for &b in chunks.remainder() {
        counts[0][b as usize] += 1;
    }
    let total = input.len() as f64;
    let mut entropy = 0.0;
    let [c0, c1, c2, c3] = &counts;
    for (((a, b), c), d) in c0.iter().zip(c1).zip(c2).zip(c3) {
        let n = a + b + c + d;
        if n > 0 {
            let p = f64::from(n) / total;
            entropy -= p * p.log2();
        }
    }
    entropy
}

/// Compresses one cluster; returns `None` when the result would not be
/// smaller than `max_len` (the caller then stores it uncompressed), or
/// when the data's byte entropy and the lack of repeated strings say it
/// would not be (see [`INCOMPRESSIBLE_ENTROPY`], [`has_repeats`]).
///
/// zlib output is QEMU's (raw deflate, level 6, a 4 KiB window, memory
/// level 9: `QEMU_ZLIB`), so clusters compress to the same sizes. The
/// thread's compressor is reused from call to call.
pub fn compress(kind: CompressionType, input: &[u8], max_len: usize) -> Result<Option<Vec<u8>>> {
    if byte_entropy(input) >= INCOMPRESSIBLE_ENTROPY && !has_repeats(input) {
        return Ok(None);
    }
    match kind {
        CompressionType::Zlib => ZLIB.with(|cell| {
            let mut slot = cell.borrow_mut();
            let stream = slot.get_or_insert_with(|| zlib_rs::Deflate::new_with_config(QEMU_ZLIB));
            stream.reset();
            let mut out = vec![0u8; max_len];
            let status = stream.compress(input, &mut out, zlib_rs::DeflateFlush::Finish);
            let len = stream.total_out() as usize;
            if status == Ok(zlib_rs::Status::StreamEnd) && len < max_len {
                out.truncate(len);
                Ok(Some(out))
            } else {
                Ok(None)
            }
        }),
        CompressionType::Zstd => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let compressor = zstd::bulk::Compressor::new(0)
                    .map_err(|e| Error::Unsupported(format!("zstd: {e}")))?;
                *slot = Some(compressor);
            }
            let compressor = slot.as_mut().expect("set above");
            let mut out = vec![0u8; max_len];
            match compressor.compress_to_buffer(input, &mut out) {
                Ok(n) if n < max_len => {
                    out.truncate(n);
                    Ok(Some(out))
                }
                _ => Ok(None),
            }
        }),
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

    #[test]
    fn entropy_separates_random_from_text() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(byte_entropy(&random) > INCOMPRESSIBLE_ENTROPY);
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        assert!(byte_entropy(&text) < 5.0);
        assert_eq!(byte_entropy(&[7u8; 4096]), 0.0);
        assert!(!has_repeats(&random));
        // Flat byte frequencies, but runs: compressible, and tried.
        let runs: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        assert!(byte_entropy(&runs) > INCOMPRESSIBLE_ENTROPY);
        assert!(has_repeats(&runs));
        // A random 1 KiB block repeated: flat, and compressible.
        let repeated: Vec<u8> = random[..1024].iter().cycle().take(65536).copied().collect();
        assert!(has_repeats(&repeated));
        assert!(compress(CompressionType::Zlib, &repeated, 65536 - 512)
            .unwrap()
            .is_some());
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            assert!(compress(kind, &random, 65536 - 512).unwrap().is_none());
            assert!(compress(kind, &text, 65536 - 512).unwrap().is_some());
        }
    }

    #[test]
    fn reused_stream_compresses_as_a_fresh_one() {
        let a: Vec<u8> = (0..65536u32).map(|i| (i % 97) as u8).collect();
        let b: Vec<u8> = (0..65536u32).map(|i| (i / 300) as u8).collect();
        for input in [&a, &b, &a] {
            let mut fresh = vec![0u8; input.len()];
            let (expected, rc) = zlib_rs::compress_slice(&mut fresh, input, QEMU_ZLIB);
            assert_eq!(rc, zlib_rs::ReturnCode::Ok);
            let got = compress(CompressionType::Zlib, input, input.len() - 512)
                .unwrap()
                .unwrap();
            assert_eq!(got, expected);
            let z = compress(CompressionType::Zstd, input, input.len() - 512)
                .unwrap()
                .unwrap();
            assert_eq!(z, zstd::bulk::compress(input, 0).unwrap());
        }
    }
}
