//! An encrypted image's key: the LUKS header in the image's clusters (or
//! the legacy AES method), unlocked with a password into the cipher the
//! read and write paths apply to data clusters.

use super::Qcow2;
use crate::crypto::{qcow_aes_cipher, ImageCipher, LuksHeader, CRYPT_AES, CRYPT_LUKS};
use crate::error::{Error, Result};
use crate::extensions::HeaderCluster;
use crate::storage::Storage;

/// Checks an image's encryption fields as QEMU does on open: a LUKS image
/// needs its header extension, cluster-aligned, holding a valid header;
/// the extension is refused with any other method.
pub(super) fn validate(file: &dyn Storage, hc: &HeaderCluster) -> Result<()> {
    let method = hc.header.crypt_method;
    let ext = hc.crypto_header()?;
    match (method, ext) {
        (CRYPT_LUKS, None) => Err(Error::CryptoHeaderExtension {
            value: method.into(),
            reason: format!("Missing CRYPTO header for crypt method {method}"),
        }),
        (CRYPT_LUKS, Some(_)) => read_luks_header(file, hc).map(|_| ()),
        (_, Some(_)) => Err(Error::CryptoHeaderExtension {
            value: method.into(),
            reason: "CRYPTO header extension only expected with LUKS encryption method".into(),
        }),
        _ => Ok(()),
    }
}

/// Reads and validates the LUKS header an image's extension points at.
fn read_luks_header(file: &dyn Storage, hc: &HeaderCluster) -> Result<LuksHeader> {
    let (offset, len) = hc.crypto_header()?.ok_or(Error::CryptoHeaderExtension {
        value: 0,
        reason: "Missing CRYPTO header for crypt method 2".into(),
    })?;
    let cs = hc.header.cluster_size();
    if !offset.is_multiple_of(cs) {
        return Err(Error::CryptoHeaderExtension {
            value: offset,
            reason: format!(
                "Encryption header offset '{offset}' is not a multiple of cluster size '{cs}'"
            ),
        });
    }
    let file_len = file.len()?;
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(Error::CryptoHeaderExtension {
            value: len,
            reason: format!(
                "Encryption header at {offset} of {len} bytes lies past the end of the file"
            ),
        });
    }
    let mut buf = vec![0u8; crate::crypto::luks::HEADER_LEN.min(len as usize)];
    file.read_at(&mut buf, offset)?;
    LuksHeader::parse(&buf, len)
}

impl Qcow2 {
    /// The header's encryption method (0 none, 1 AES, 2 LUKS).
    pub fn crypt_method(&self) -> u32 {
        self.lock().hc.header.crypt_method
    }

    /// Whether data clusters are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.crypt_method() != 0
    }

    /// The LUKS header of a LUKS-encrypted image.
    pub fn luks_header(&self) -> Result<Option<LuksHeader>> {
        let hc = self.header_cluster();
        if hc.header.crypt_method != CRYPT_LUKS {
            return Ok(None);
        }
        read_luks_header(&*self.file, &hc).map(Some)
    }

    /// Sets the data cipher (of a new image, whose key is at hand).
    pub fn set_cipher(&self, cipher: ImageCipher) {
        let _ = self.cipher.set(cipher);
    }

    /// Unlocks an encrypted image's data with `password` (a no-op for
    /// images without encryption); a wrong password is
    /// [`Error::InvalidPassword`] for LUKS (AES cannot tell).
    pub fn unlock(&self, password: &[u8]) -> Result<()> {
        let cipher = match self.crypt_method() {
            0 => return Ok(()),
            CRYPT_AES => ImageCipher::qcow_aes(qcow_aes_cipher(password)?),
            _ => {
                let header = self.require_luks_header()?;
                let key = header.unlock(password, &mut |at, buf| self.read_crypto_area(at, buf))?;
                ImageCipher::luks(header.payload_cipher(&key)?)
            }
        };
        self.set_cipher(cipher);
        Ok(())
    }

    /// Reads `buf.len()` bytes at `at` of the encryption header area.
    fn read_crypto_area(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        let (offset, len) = self.crypto_area()?;
        if at.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(Error::CryptoHeaderExtension {
                value: at,
                reason: "Request for data outside of extension header".into(),
            });
        }
        self.file.read_at(buf, offset + at)
    }

    /// Writes `data` at `at` of the encryption header area.
    fn write_crypto_area(&self, at: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        let (offset, len) = self.crypto_area()?;
        if at
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > len)
        {
            return Err(Error::CryptoHeaderExtension {
                value: at,
                reason: "Request for data outside of extension header".into(),
            });
        }
        self.file.write_at(data, offset + at)
    }

    fn crypto_area(&self) -> Result<(u64, u64)> {
        self.header_cluster()
            .crypto_header()?
            .ok_or(Error::CryptoHeaderExtension {
                value: 0,
                reason: "image has no LUKS header".into(),
            })
    }

    fn require_luks_header(&self) -> Result<LuksHeader> {
        self.luks_header()?.ok_or(Error::CryptoHeaderExtension {
            value: 0,
            reason: "image has no LUKS header".into(),
        })
    }

    /// The master key of a LUKS image, unlocked with `password`.
    pub fn luks_master_key(&self, password: &[u8]) -> Result<crate::crypto::MasterKey> {
        let header = self.require_luks_header()?;
        header.unlock(password, &mut |at, buf| self.read_crypto_area(at, buf))
    }

    /// Whether `password` opens key slot `index` of a LUKS image.
    pub fn luks_slot_opens(&self, index: usize, password: &[u8]) -> Result<bool> {
        let header = self.require_luks_header()?;
        header.slot_opens(index, password, &mut |at, buf| {
            self.read_crypto_area(at, buf)
        })
    }

    /// Stores `key` in key slot `index` under `password` (PBKDF2 for
    /// `iter_time_ms`) and writes the header back.
    pub fn luks_store_key(
        &self,
        index: usize,
        key: &crate::crypto::MasterKey,
        password: &[u8],
        iter_time_ms: u64,
    ) -> Result<()> {
        let mut header = self.require_luks_header()?;
        header.store_key(index, key, password, iter_time_ms, &mut |at, data| {
            self.write_crypto_area(at, data)
        })?;
        self.write_crypto_area(0, &header.write())?;
        self.file.flush()
    }

    /// Erases key slot `index` and writes the header back.
    pub fn luks_erase_key(&self, index: usize) -> Result<()> {
        let mut header = self.require_luks_header()?;
        header.erase_key(index, &mut |at, data| self.write_crypto_area(at, data))?;
        self.write_crypto_area(0, &header.write())?;
        self.file.flush()
    }

    /// The data cipher, or the error of an encrypted image opened
    /// without its key; `None` for images without encryption.
    pub(super) fn cipher(&self) -> Result<Option<&ImageCipher>> {
        if let Some(c) = self.cipher.get() {
            return Ok(Some(c));
        }
        if self.is_encrypted() {
            return Err(Error::KeySecretRequired {
                option: "encrypt.key-secret".into(),
            });
        }
        Ok(None)
    }
}
