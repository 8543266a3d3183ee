//! Hashing, PBKDF2 and the iteration count QEMU measures for a PBKDF2
//! run, over RustCrypto's `sha1`, `sha2`, `md-5`, `ripemd` and `pbkdf2`.

use md5::Md5;
use ripemd::Ripemd160;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use super::algs::HashAlg;
use super::thread_time::thread_cpu_ms;

/// The digest of the concatenation of `parts`.
pub fn digest(hash: HashAlg, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match hash {
        HashAlg::Sha1 => run::<Sha1>(parts),
        HashAlg::Sha224 => run::<Sha224>(parts),
        HashAlg::Sha256 => run::<Sha256>(parts),
        HashAlg::Sha384 => run::<Sha384>(parts),
        HashAlg::Sha512 => run::<Sha512>(parts),
        HashAlg::Md5 => run::<Md5>(parts),
        HashAlg::Ripemd160 => run::<Ripemd160>(parts),
    }
}

/// PBKDF2-HMAC of `password` and `salt` with `iterations` rounds, filling
/// `out`.
pub fn pbkdf2(hash: HashAlg, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    use pbkdf2::pbkdf2_hmac;
    match hash {
        HashAlg::Sha1 => pbkdf2_hmac::<Sha1>(password, salt, iterations, out),
        HashAlg::Sha224 => pbkdf2_hmac::<Sha224>(password, salt, iterations, out),
        HashAlg::Sha256 => pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
        HashAlg::Sha384 => pbkdf2_hmac::<Sha384>(password, salt, iterations, out),
        HashAlg::Sha512 => pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
        HashAlg::Md5 => pbkdf2_hmac::<Md5>(password, salt, iterations, out),
        HashAlg::Ripemd160 => pbkdf2_hmac::<Ripemd160>(password, salt, iterations, out),
    }
}

/// First iteration count of the measurement, as QEMU's.
const FIRST_MEASURED_ITERATIONS: u64 = 1 << 15;
/// A run shorter than this (ms) scales the count by ten.
const SHORT_RUN_MS: u128 = 100;
/// A run longer than this (ms) ends the measurement.
const LONG_RUN_MS: u128 = 500;
/// Largest count tried (a clock that never advances must not loop on).
const MAX_MEASURED_ITERATIONS: u64 = u32::MAX as u64;

/// PBKDF2 iterations per second for this key, salt and output length,
/// measured as QEMU's `qcrypto_pbkdf2_count_iters` does: runs of growing
/// length until one takes over half a second of the thread's CPU time,
/// scaled to one second.
pub fn iterations_per_second(hash: HashAlg, key: &[u8], salt: &[u8], out_len: usize) -> u64 {
    let mut out = vec![0u8; out_len];
    let mut iterations = FIRST_MEASURED_ITERATIONS;
    loop {
        let start = thread_cpu_ms();
        pbkdf2(hash, key, salt, iterations as u32, &mut out);
        let ms = match (start, thread_cpu_ms()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        if ms > LONG_RUN_MS || iterations >= MAX_MEASURED_ITERATIONS {
            return (iterations as u128 * 1000 / ms.max(1)) as u64;
        }
        iterations = if ms < SHORT_RUN_MS {
            iterations * 10
        } else {
            (iterations as u128 * 1000 / ms) as u64
        }
        .min(MAX_MEASURED_ITERATIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc6070_and_rfc7914_vectors() {
        let mut out = [0u8; 20];
        pbkdf2(HashAlg::Sha1, b"password", b"salt", 2, &mut out);
        assert_eq!(hex(&out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
        let mut out = [0u8; 64];
        pbkdf2(HashAlg::Sha256, b"passwd", b"salt", 1, &mut out);
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
    }

    #[test]
    fn digest_concatenates_its_parts() {
        assert_eq!(
            digest(HashAlg::Sha256, &[b"ab", b"c"]),
            digest(HashAlg::Sha256, &[b"abc"])
        );
        assert_eq!(
            hex(&digest(HashAlg::Sha1, &[b"abc"])),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&digest(HashAlg::Md5, &[b"abc"])),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex(&digest(HashAlg::Ripemd160, &[b"abc"])),
            "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
        );
    }
}
