//! Sector encryption: a cipher, a chaining mode and an IV generator
//! applied to 512-byte sectors numbered from a start sector, as QEMU's
//! `qcrypto_block_cipher_{en,de}crypt_helper` do. The block ciphers and
//! modes are RustCrypto's (`aes`, `serpent`, `twofish`, `cast5`, `cbc`,
//! `ctr`, `xts-mode`).

use aes::cipher::consts::{U16, U8};
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit, StreamCipher,
};
use aes::{Aes128, Aes192, Aes256};
use cast5::Cast5;
use serpent::Serpent;
use twofish::Twofish;
use xts_mode::Xts128;

use super::algs::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use super::hash::digest;
use crate::error::{Error, Result};

/// Size of an encryption sector (LUKS and qcow's AES alike).
pub const SECTOR_SIZE: usize = 512;
/// Longest cipher block (and so IV) of any cipher here.
const MAX_BLOCK: usize = 16;

/// One mode over one block cipher, keyed. `iv` is one cipher block long.
trait SectorMode: Send + Sync {
    fn encrypt(&self, sector: &mut [u8], iv: &[u8]);
    fn decrypt(&self, sector: &mut [u8], iv: &[u8]);
}

struct Ecb<C>(C);
struct Cbc<C>(C);
struct Ctr128<C>(C);
struct Ctr64<C>(C);
struct Xts<C: BlockEncrypt + BlockDecrypt + BlockCipher>(Xts128<C>);

/// The cipher's blocks of `buf` (whole blocks: sectors are multiples of
/// every block length here).
fn blocks<C: BlockSizeUser>(
    buf: &mut [u8],
) -> impl Iterator<Item = &mut GenericArray<u8, C::BlockSize>> {
    buf.chunks_exact_mut(C::block_size())
        .map(GenericArray::from_mut_slice)
}

impl<C> SectorMode for Ecb<C>
where
    C: BlockEncrypt + BlockDecrypt + Send + Sync,
{
    fn encrypt(&self, sector: &mut [u8], _iv: &[u8]) {
        for b in blocks::<C>(sector) {
            self.0.encrypt_block(b);
        }
    }
    fn decrypt(&self, sector: &mut [u8], _iv: &[u8]) {
        for b in blocks::<C>(sector) {
            self.0.decrypt_block(b);
        }
    }
}

impl<C> SectorMode for Cbc<C>
where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + Clone + Send + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let iv = GenericArray::from_slice(iv);
        let mut enc = cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), iv);
        for b in blocks::<C>(sector) {
            enc.encrypt_block_mut(b);
        }
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let iv = GenericArray::from_slice(iv);
        let mut dec = cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), iv);
        for b in blocks::<C>(sector) {
            dec.decrypt_block_mut(b);
        }
    }
}

impl<C> SectorMode for Ctr128<C>
where
    C: BlockCipher + BlockEncrypt + BlockSizeUser<BlockSize = U16> + Clone + Send + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let iv = GenericArray::from_slice(iv);
        let core = ctr::CtrCore::<C, ctr::flavors::Ctr128BE>::inner_iv_init(self.0.clone(), iv);
        ctr::cipher::StreamCipherCoreWrapper::from_core(core).apply_keystream(sector);
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8]) {
        self.encrypt(sector, iv);
    }
}

impl<C> SectorMode for Ctr64<C>
where
    C: BlockCipher + BlockEncrypt + BlockSizeUser<BlockSize = U8> + Clone + Send + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let iv = GenericArray::from_slice(iv);
        let core = ctr::CtrCore::<C, ctr::flavors::Ctr64BE>::inner_iv_init(self.0.clone(), iv);
        ctr::cipher::StreamCipherCoreWrapper::from_core(core).apply_keystream(sector);
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8]) {
        self.encrypt(sector, iv);
    }
}

impl<C> SectorMode for Xts<C>
where
    C: BlockEncrypt + BlockDecrypt + BlockCipher + BlockSizeUser<BlockSize = U16> + Send + Sync,
{
    fn encrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let mut tweak = [0u8; 16];
        tweak.copy_from_slice(iv);
        self.0.encrypt_sector(sector, tweak);
    }
    fn decrypt(&self, sector: &mut [u8], iv: &[u8]) {
        let mut tweak = [0u8; 16];
        tweak.copy_from_slice(iv);
        self.0.decrypt_sector(sector, tweak);
    }
}

fn key_error(alg: CipherAlg, len: usize) -> Error {
    Error::CryptoUnsupported {
        what: "key length",
        value: format!("{len} bytes do not key {}", alg.name()),
    }
}

fn new_key<C: KeyInit>(alg: CipherAlg, key: &[u8]) -> Result<C> {
    C::new_from_slice(key).map_err(|_| key_error(alg, key.len()))
}

/// A 16-byte-block cipher in `mode`.
fn keyed16<C>(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn SectorMode>>
where
    C: KeyInit
        + BlockCipher
        + BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = U16>
        + Clone
        + Send
        + Sync
        + 'static,
{
    Ok(match mode {
        CipherMode::Ecb => Box::new(Ecb(new_key::<C>(alg, key)?)),
        CipherMode::Cbc => Box::new(Cbc(new_key::<C>(alg, key)?)),
        CipherMode::Ctr => Box::new(Ctr128(new_key::<C>(alg, key)?)),
        CipherMode::Xts => {
            let (k1, k2) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(
                new_key::<C>(alg, k1)?,
                new_key::<C>(alg, k2)?,
            )))
        }
    })
}

/// An 8-byte-block cipher in `mode` (XTS needs 16-byte blocks).
fn keyed8<C>(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn SectorMode>>
where
    C: KeyInit
        + BlockCipher
        + BlockEncrypt
        + BlockDecrypt
        + BlockSizeUser<BlockSize = U8>
        + Clone
        + Send
        + Sync
        + 'static,
{
    Ok(match mode {
        CipherMode::Ecb => Box::new(Ecb(new_key::<C>(alg, key)?)),
        CipherMode::Cbc => Box::new(Cbc(new_key::<C>(alg, key)?)),
        CipherMode::Ctr => Box::new(Ctr64(new_key::<C>(alg, key)?)),
        CipherMode::Xts => return Err(unsupported_mode(mode)),
    })
}

/// QEMU's message for a mode its cipher cannot run in.
fn unsupported_mode(mode: CipherMode) -> Error {
    Error::CryptoUnsupported {
        what: "cipher-mode",
        value: format!("Unsupported cipher mode {}", mode.name()),
    }
}

fn new_mode(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn SectorMode>> {
    match alg {
        CipherAlg::Aes128 => keyed16::<Aes128>(alg, mode, key),
        CipherAlg::Aes192 => keyed16::<Aes192>(alg, mode, key),
        CipherAlg::Aes256 => keyed16::<Aes256>(alg, mode, key),
        CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => {
            keyed16::<Serpent>(alg, mode, key)
        }
        CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => {
            keyed16::<Twofish>(alg, mode, key)
        }
        CipherAlg::Cast5_128 => keyed8::<Cast5>(alg, mode, key),
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

    /// Checks that the spec can be keyed, as QEMU checks it: XTS needs
    /// a 16-byte block, ESSIV a cipher of its hash's digest length.
    pub fn validate(&self) -> Result<()> {
        if self.mode == CipherMode::Xts && self.alg.block_len() != 16 {
            return Err(unsupported_mode(self.mode));
        }
        if self.ivgen == IvGenAlg::Essiv {
            let hash = self.ivgen_hash.unwrap_or(HashAlg::Sha256);
            self.alg.essiv_cipher(hash.digest_len())?;
        }
        Ok(())
    }
}

/// A keyed sector cipher.
pub struct SectorCipher {
    mode: Box<dyn SectorMode>,
    /// The cipher's block length, the IV's.
    block_len: usize,
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
        spec.validate()?;
        let essiv = if spec.ivgen == IvGenAlg::Essiv {
            let hash = spec.ivgen_hash.unwrap_or(HashAlg::Sha256);
            let alg = spec.alg.essiv_cipher(hash.digest_len())?;
            let salt = digest(hash, &[key]);
            Some(new_mode(alg, CipherMode::Ecb, &salt[..alg.key_len()])?)
        } else {
            None
        };
        Ok(SectorCipher {
            mode: new_mode(spec.alg, spec.mode, key)?,
            block_len: spec.alg.block_len(),
            ivgen: spec.ivgen,
            essiv,
        })
    }

    /// Sector `sector`'s IV in the first `block_len` bytes of the
    /// result, made as QEMU's ivgen-plain, -plain64 and -essiv make it:
    /// the number little-endian, cut to the IV's length.
    fn iv(&self, sector: u64) -> [u8; MAX_BLOCK] {
        let mut iv = [0u8; MAX_BLOCK];
        let n = self.block_len;
        match self.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            IvGenAlg::Essiv => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                self.essiv
                    .as_ref()
                    .expect("ESSIV ciphers have an IV cipher")
                    .encrypt(&mut iv[..n], &[]);
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
            self.mode.encrypt(s, &iv[..self.block_len]);
        }
    }

    /// Decrypts `buf` (whole sectors) in place; its first sector is
    /// number `first_sector`.
    pub fn decrypt(&self, buf: &mut [u8], first_sector: u64) {
        assert!(buf.len().is_multiple_of(SECTOR_SIZE), "whole sectors only");
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            let iv = self.iv(first_sector + i as u64);
            self.mode.decrypt(s, &iv[..self.block_len]);
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
        for alg in CipherAlg::ALL {
            for mode in [
                CipherMode::Ecb,
                CipherMode::Cbc,
                CipherMode::Xts,
                CipherMode::Ctr,
            ] {
                for ivgen in [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv] {
                    let mut s = spec(alg, mode, ivgen);
                    if alg == CipherAlg::Cast5_128 {
                        s.ivgen_hash = Some(HashAlg::Md5);
                    }
                    if s.validate().is_err() {
                        assert!(alg == CipherAlg::Cast5_128 && mode == CipherMode::Xts);
                        continue;
                    }
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
        let s = spec(CipherAlg::Cast5_128, CipherMode::Xts, IvGenAlg::Plain64);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("Unsupported cipher mode xts"), "{e}");
    }
}
