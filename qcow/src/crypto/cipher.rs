//! Sector encryption: a cipher, a chaining mode and an IV generator
//! applied to 512-byte sectors numbered from a start sector, as QEMU's
//! `qcrypto_block_cipher_{en,de}crypt_helper` do. The block ciphers and
//! modes are RustCrypto's (`aes`, `cbc`, `xts-mode`).

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;

use super::algs::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use super::hash::digest;
use crate::error::{Error, Result};

/// Size of an encryption sector (LUKS and qcow's AES alike).
pub const SECTOR_SIZE: usize = 512;
/// AES's block size, the IV length of CBC and XTS.
const BLOCK: usize = 16;

/// One mode over one block cipher, keyed.
trait SectorMode: Send + Sync {
    fn encrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]);
    fn decrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]);
}

struct Ecb<C>(C);
struct Cbc<C>(C);
struct Xts<C: BlockEncrypt + BlockDecrypt + BlockCipher>(Xts128<C>);

fn blocks(buf: &mut [u8]) -> impl Iterator<Item = &mut GenericArray<u8, aes::cipher::consts::U16>> {
    buf.chunks_exact_mut(BLOCK)
        .map(GenericArray::from_mut_slice)
}

impl<C> SectorMode for Ecb<C>
where
    C: BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + Send
        + Sync,
{
    fn encrypt(&self, sector: &mut [u8], _iv: &[u8; BLOCK]) {
        for b in blocks(sector) {
            self.0.encrypt_block(b);
        }
    }
    fn decrypt(&self, sector: &mut [u8], _iv: &[u8; BLOCK]) {
        for b in blocks(sector) {
            self.0.decrypt_block(b);
        }
    }
}

impl<C> SectorMode for Cbc<C>
where
    C: BlockCipher
        + BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + Clone
        + Send
        + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]) {
        let mut enc = cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), iv.into());
        for b in blocks(sector) {
            enc.encrypt_block_mut(b);
        }
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]) {
        let mut dec = cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), iv.into());
        for b in blocks(sector) {
            dec.decrypt_block_mut(b);
        }
    }
}

impl<C> SectorMode for Xts<C>
where
    C: BlockEncrypt
        + BlockDecrypt
        + BlockCipher
        + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + Send
        + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]) {
        self.0.encrypt_sector(sector, *iv);
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8; BLOCK]) {
        self.0.decrypt_sector(sector, *iv);
    }
}

fn keyed<C>(mode: CipherMode, key: &[u8]) -> Box<dyn SectorMode>
where
    C: KeyInit
        + BlockCipher
        + BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = aes::cipher::consts::U16>
        + Clone
        + Send
        + Sync
        + 'static,
{
    match mode {
        CipherMode::Ecb => Box::new(Ecb(C::new_from_slice(key).expect("key length checked"))),
        CipherMode::Cbc => Box::new(Cbc(C::new_from_slice(key).expect("key length checked"))),
        CipherMode::Xts => {
            let (k1, k2) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(
                C::new_from_slice(k1).expect("key length checked"),
                C::new_from_slice(k2).expect("key length checked"),
            )))
        }
    }
}

fn new_mode(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Box<dyn SectorMode> {
    match alg {
        CipherAlg::Aes128 => keyed::<Aes128>(mode, key),
        CipherAlg::Aes192 => keyed::<Aes192>(mode, key),
        CipherAlg::Aes256 => keyed::<Aes256>(mode, key),
    }
}

/// The full description of a sector cipher (what a LUKS header records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher.
    pub alg: CipherAlg,
    /// The chaining mode.
    pub mode: CipherMode,
    /// The IV generator.
    pub ivgen: IvGenAlg,
    /// ESSIV's hash (recorded for other generators too, then unused).
    pub ivgen_hash: Option<HashAlg>,
}

impl CipherSpec {
    /// Length of the key this spec takes (twice the cipher's in XTS).
    pub fn key_len(&self) -> usize {
        match self.mode {
            CipherMode::Xts => 2 * self.alg.key_len(),
            _ => self.alg.key_len(),
        }
    }

    /// The cipher ESSIV encrypts sector numbers with: the same family,
    /// keyed by the hash's digest (QEMU's `qcrypto_block_luks_essiv_cipher`).
    fn essiv_cipher(&self, hash: HashAlg) -> Result<CipherAlg> {
        let len = hash.digest_len();
        if len == self.alg.key_len() {
            return Ok(self.alg);
        }
        match len {
            16 => Ok(CipherAlg::Aes128),
            24 => Ok(CipherAlg::Aes192),
            32 => Ok(CipherAlg::Aes256),
            _ => Err(Error::CryptoUnsupported {
                what: "ivgen-hash-alg",
                value: format!("No AES cipher with key size {len} available"),
            }),
        }
    }

    /// Checks that the spec can be keyed (ESSIV's cipher exists).
    pub fn validate(&self) -> Result<()> {
        if self.ivgen == IvGenAlg::Essiv {
            self.essiv_cipher(self.ivgen_hash.unwrap_or(HashAlg::Sha256))?;
        }
        Ok(())
    }
}

/// A keyed sector cipher.
pub struct SectorCipher {
    mode: Box<dyn SectorMode>,
    ivgen: IvGenAlg,
    essiv: Option<Box<dyn SectorMode>>,
}

impl SectorCipher {
    /// Keys `spec` with `key`, whose length must be `spec.key_len()`.
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<SectorCipher> {
        if key.len() != spec.key_len() {
            return Err(Error::CryptoUnsupported {
                what: "key length",
                value: format!(
                    "{} bytes where {} expects {}",
                    key.len(),
                    spec.alg.name(),
                    spec.key_len()
                ),
            });
        }
        let essiv = if spec.ivgen == IvGenAlg::Essiv {
            let hash = spec.ivgen_hash.unwrap_or(HashAlg::Sha256);
            let alg = spec.essiv_cipher(hash)?;
            let salt = digest(hash, &[key]);
            Some(new_mode(alg, CipherMode::Ecb, &salt[..alg.key_len()]))
        } else {
            None
        };
        Ok(SectorCipher {
            mode: new_mode(spec.alg, spec.mode, key),
            ivgen: spec.ivgen,
            essiv,
        })
    }

    fn iv(&self, sector: u64) -> [u8; BLOCK] {
        let mut iv = [0u8; BLOCK];
        match self.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            IvGenAlg::Essiv => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                let zero = [0u8; BLOCK];
                self.essiv
                    .as_ref()
                    .expect("ESSIV ciphers have an IV cipher")
                    .encrypt(&mut iv, &zero);
            }
        }
        iv
    }

    /// Encrypts `buf` (whole sectors) in place; its first sector is
    /// number `first_sector`.
    pub fn encrypt(&self, buf: &mut [u8], first_sector: u64) {
        assert!(buf.len().is_multiple_of(SECTOR_SIZE), "whole sectors only");
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            let iv = self.iv(first_sector + i as u64);
            self.mode.encrypt(s, &iv);
        }
    }

    /// Decrypts `buf` (whole sectors) in place; its first sector is
    /// number `first_sector`.
    pub fn decrypt(&self, buf: &mut [u8], first_sector: u64) {
        assert!(buf.len().is_multiple_of(SECTOR_SIZE), "whole sectors only");
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            let iv = self.iv(first_sector + i as u64);
            self.mode.decrypt(s, &iv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alg: CipherAlg, mode: CipherMode, ivgen: IvGenAlg) -> CipherSpec {
        CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash: Some(HashAlg::Sha256),
        }
    }

    #[test]
    fn every_combination_round_trips_and_changes_the_data() {
        for alg in [CipherAlg::Aes128, CipherAlg::Aes192, CipherAlg::Aes256] {
            for mode in [CipherMode::Ecb, CipherMode::Cbc, CipherMode::Xts] {
                for ivgen in [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv] {
                    let s = spec(alg, mode, ivgen);
                    let key: Vec<u8> = (0..s.key_len() as u8).collect();
                    let c = SectorCipher::new(&s, &key).unwrap();
                    let plain: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
                    let mut buf = plain.clone();
                    c.encrypt(&mut buf, 5);
                    assert_ne!(buf, plain);
                    c.decrypt(&mut buf, 5);
                    assert_eq!(buf, plain, "{alg:?} {mode:?} {ivgen:?}");
                }
            }
        }
    }

    #[test]
    fn xts_plain64_matches_ieee_1619_vector_4() {
        // IEEE 1619-2007 XTS-AES-128 vector 4: keys 2718..., 3141...,
        // data unit 0, plaintext bytes 0..=255 twice.
        let k1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let k2 = "3141592653589793238462643383279502884197169399375105820974944592";
        let key: Vec<u8> = (0..32)
            .map(|i| {
                let h = if i < 16 {
                    &k1[i * 2..i * 2 + 2]
                } else {
                    &k2[(i - 16) * 2..(i - 16) * 2 + 2]
                };
                u8::from_str_radix(h, 16).unwrap()
            })
            .collect();
        let c = SectorCipher::new(
            &spec(CipherAlg::Aes128, CipherMode::Xts, IvGenAlg::Plain64),
            &key,
        )
        .unwrap();
        let mut buf: Vec<u8> = (0..512).map(|i| i as u8).collect();
        c.encrypt(&mut buf, 0);
        assert_eq!(&buf[..8], &[0x27, 0xa7, 0x47, 0x9b, 0xef, 0xa1, 0xd4, 0x76]);
    }

    #[test]
    fn sector_numbers_change_the_ciphertext() {
        let s = spec(CipherAlg::Aes256, CipherMode::Xts, IvGenAlg::Plain64);
        let c = SectorCipher::new(&s, &[9u8; 64]).unwrap();
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        c.encrypt(&mut a, 1);
        c.encrypt(&mut b, 2);
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_key_length_and_essiv_without_a_cipher_are_refused() {
        let s = spec(CipherAlg::Aes256, CipherMode::Xts, IvGenAlg::Plain64);
        assert!(SectorCipher::new(&s, &[0u8; 32]).is_err());
        let mut s = spec(CipherAlg::Aes128, CipherMode::Cbc, IvGenAlg::Essiv);
        s.ivgen_hash = Some(HashAlg::Sha1);
        assert!(s.validate().is_err());
    }
}
