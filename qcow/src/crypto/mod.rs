//! Disk encryption: LUKS1 volumes (qcow2's `encrypt.format=luks` and the
//! `luks` format, opened for I/O as [`LuksVolume`]) and qcow's legacy AES (`encrypt.format=aes`), over
//! RustCrypto's primitives. Nothing here does I/O: headers and key
//! material move through the caller's read and write functions, and an
//! open image encrypts and decrypts its data clusters through
//! [`ImageCipher`].

pub mod afsplit;
pub mod algs;
pub mod cipher;
pub mod hash;
pub mod luks;
mod thread_time;
pub mod volume;

pub use algs::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
pub use cipher::{CipherSpec, SectorCipher, SECTOR_SIZE};
pub use luks::{LuksHeader, LuksOptions, MasterKey};
pub use volume::LuksVolume;

use crate::error::{Error, Result};

/// qcow2's `crypt_method` of legacy AES-CBC.
pub const CRYPT_AES: u32 = 1;
/// qcow2's `crypt_method` of LUKS.
pub const CRYPT_LUKS: u32 = 2;

/// Fills `buf` with random bytes from the system.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| Error::CryptoUnsupported {
        what: "random source",
        value: e.to_string(),
    })
}

/// The cipher of qcow's legacy AES encryption: AES-128-CBC with plain64
/// IVs, keyed by the password's first 16 bytes (zero-padded), as QEMU's
/// `crypto/block-qcow.c` does.
pub fn qcow_aes_cipher(password: &[u8]) -> Result<SectorCipher> {
    let mut key = [0u8; 16];
    let n = password.len().min(16);
    key[..n].copy_from_slice(&password[..n]);
    let spec = CipherSpec {
        alg: CipherAlg::Aes128,
        mode: CipherMode::Cbc,
        ivgen: IvGenAlg::Plain64,
        ivgen_hash: None,
    };
    let c = SectorCipher::new(&spec, &key);
    key.fill(0);
    c
}

/// How an open qcow2 image encrypts its data clusters.
pub struct ImageCipher {
    cipher: SectorCipher,
    /// LUKS numbers sectors by host offset, legacy AES by guest offset.
    physical: bool,
}

impl ImageCipher {
    /// A LUKS-encrypted image's data cipher.
    pub fn luks(cipher: SectorCipher) -> ImageCipher {
        ImageCipher {
            cipher,
            physical: true,
        }
    }

    /// A legacy AES image's data cipher.
    pub fn qcow_aes(cipher: SectorCipher) -> ImageCipher {
        ImageCipher {
            cipher,
            physical: false,
        }
    }

    fn first_sector(&self, guest_offset: u64, host_offset: u64) -> u64 {
        let at = if self.physical {
            host_offset
        } else {
            guest_offset
        };
        at / SECTOR_SIZE as u64
    }

    /// Encrypts whole sectors of data bound for `host_offset` (guest
    /// bytes at `guest_offset`).
    pub fn encrypt(&self, buf: &mut [u8], guest_offset: u64, host_offset: u64) {
        self.cipher
            .encrypt(buf, self.first_sector(guest_offset, host_offset));
    }

    /// Decrypts whole sectors read from `host_offset` (guest bytes at
    /// `guest_offset`).
    pub fn decrypt(&self, buf: &mut [u8], guest_offset: u64, host_offset: u64) {
        self.cipher
            .decrypt(buf, self.first_sector(guest_offset, host_offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow_aes_keys_from_the_first_sixteen_bytes() {
        let a = qcow_aes_cipher(b"0123456789abcdefXXX").unwrap();
        let b = qcow_aes_cipher(b"0123456789abcdefYYY").unwrap();
        let mut x = vec![1u8; 512];
        let mut y = x.clone();
        a.encrypt(&mut x, 3);
        b.encrypt(&mut y, 3);
        assert_eq!(x, y);
    }

    #[test]
    fn luks_numbers_sectors_by_host_offset_and_aes_by_guest_offset() {
        let luks = ImageCipher::luks(qcow_aes_cipher(b"k").unwrap());
        let aes = ImageCipher::qcow_aes(qcow_aes_cipher(b"k").unwrap());
        let (mut a, mut b, mut c) = (vec![0u8; 512], vec![0u8; 512], vec![0u8; 512]);
        luks.encrypt(&mut a, 0, 4096);
        luks.encrypt(&mut b, 512, 4096);
        assert_eq!(a, b);
        aes.encrypt(&mut c, 512, 0);
        aes.encrypt(&mut b, 512, 8192);
        let mut d = vec![0u8; 512];
        aes.encrypt(&mut d, 512, 0);
        assert_eq!(c, d);
    }
}
