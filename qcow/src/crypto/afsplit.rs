//! LUKS's anti-forensic splitter: a key is stored as `stripes` blocks
//! whose hash-diffused XOR gives it back, so that losing any stored block
//! loses the key (QEMU's `crypto/afsplit.c`, cryptsetup's AF_split).

use super::algs::HashAlg;
use super::hash::digest;

/// Diffuses `block` in place: each digest-sized piece becomes the hash
/// of its index (big-endian) and itself, cut to the piece's length.
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let dlen = hash.digest_len();
    for (i, piece) in block.chunks_mut(dlen).enumerate() {
        let d = digest(hash, &[&(i as u32).to_be_bytes(), piece]);
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Splits `key` into `random.len() / key.len()` stripes: `random` holds
/// random bytes for every stripe but the last, which is computed.
/// Returns the stripes (`random` with its last stripe filled).
pub fn split(hash: HashAlg, key: &[u8], mut random: Vec<u8>) -> Vec<u8> {
    let n = key.len();
    assert!(
        n > 0 && random.len().is_multiple_of(n) && random.len() >= n,
        "whole stripes"
    );
    let stripes = random.len() / n;
    let mut acc = vec![0u8; n];
    for s in 0..stripes - 1 {
        xor_into(&mut acc, &random[s * n..(s + 1) * n]);
        diffuse(hash, &mut acc);
    }
    xor_into(&mut acc, key);
    random[(stripes - 1) * n..].copy_from_slice(&acc);
    random
}

/// Joins stripes of `key_len` bytes back into the key.
pub fn merge(hash: HashAlg, key_len: usize, stripes: &[u8]) -> Vec<u8> {
    assert!(key_len > 0 && stripes.len().is_multiple_of(key_len) && !stripes.is_empty());
    let count = stripes.len() / key_len;
    let mut acc = vec![0u8; key_len];
    for s in 0..count - 1 {
        xor_into(&mut acc, &stripes[s * key_len..(s + 1) * key_len]);
        diffuse(hash, &mut acc);
    }
    xor_into(&mut acc, &stripes[(count - 1) * key_len..]);
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_undoes_split_for_every_hash_and_odd_lengths() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            for key_len in [16usize, 32, 33, 64] {
                let key: Vec<u8> = (0..key_len).map(|i| i as u8 ^ 0x5a).collect();
                let random: Vec<u8> = (0..key_len * 40).map(|i| (i * 13) as u8).collect();
                let stripes = split(hash, &key, random);
                assert_eq!(merge(hash, key_len, &stripes), key);
            }
        }
    }

    #[test]
    fn a_changed_stripe_loses_the_key() {
        let key = [7u8; 32];
        let mut stripes = split(HashAlg::Sha256, &key, vec![1u8; 32 * 10]);
        stripes[3] ^= 1;
        assert_ne!(merge(HashAlg::Sha256, 32, &stripes), key);
    }
}
