//! The algorithm names LUKS headers and qemu-img's `encrypt.*` options
//! use: ciphers, cipher modes, IV generators and hashes, parsed from
//! QEMU's spellings into closed enums.

use crate::error::{Error, Result};

/// A block cipher with its key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
}

impl CipherAlg {
    /// Parses qemu-img's `cipher-alg` value (`aes-256`).
    pub fn parse(name: &str) -> Result<CipherAlg> {
        Ok(match name {
            "aes-128" => CipherAlg::Aes128,
            "aes-192" => CipherAlg::Aes192,
            "aes-256" => CipherAlg::Aes256,
            other => return Err(unsupported("cipher-alg", other)),
        })
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
        }
    }

    /// The cipher's key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 => 16,
            CipherAlg::Aes192 => 24,
            CipherAlg::Aes256 => 32,
        }
    }

    /// The cipher of a LUKS header's `cipher_name` with a key of
    /// `key_len` bytes (the cipher's own key, half the master key in XTS).
    pub fn from_luks(name: &str, key_len: usize) -> Result<CipherAlg> {
        match (name, key_len) {
            ("aes", 16) => Ok(CipherAlg::Aes128),
            ("aes", 24) => Ok(CipherAlg::Aes192),
            ("aes", 32) => Ok(CipherAlg::Aes256),
            _ => Err(Error::CryptoUnsupported {
                what: "LUKS cipher",
                value: format!("{name} with a {key_len}-byte key"),
            }),
        }
    }

    /// The name a LUKS header records (`aes`).
    pub fn luks_name(self) -> &'static str {
        "aes"
    }
}

/// How the cipher chains blocks within a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherMode {
    /// Each block alone.
    Ecb,
    /// Cipher block chaining.
    Cbc,
    /// XEX with ciphertext stealing (two keys).
    Xts,
}

impl CipherMode {
    /// Parses qemu-img's `cipher-mode` value.
    pub fn parse(name: &str) -> Result<CipherMode> {
        Ok(match name {
            "ecb" => CipherMode::Ecb,
            "cbc" => CipherMode::Cbc,
            "xts" => CipherMode::Xts,
            other => return Err(unsupported("cipher-mode", other)),
        })
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Ecb => "ecb",
            CipherMode::Cbc => "cbc",
            CipherMode::Xts => "xts",
        }
    }
}

/// How each sector's IV is made from its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGenAlg {
    /// The sector number's low 32 bits, little-endian.
    Plain,
    /// The sector number, little-endian 64 bits.
    Plain64,
    /// The sector number encrypted with the hash of the key.
    Essiv,
}

impl IvGenAlg {
    /// Parses qemu-img's `ivgen-alg` value.
    pub fn parse(name: &str) -> Result<IvGenAlg> {
        Ok(match name {
            "plain" => IvGenAlg::Plain,
            "plain64" => IvGenAlg::Plain64,
            "essiv" => IvGenAlg::Essiv,
            other => return Err(unsupported("ivgen-alg", other)),
        })
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv => "essiv",
        }
    }
}

/// A hash function (for PBKDF2, the anti-forensic splitter and ESSIV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// Parses qemu-img's (and LUKS's) hash name.
    pub fn parse(name: &str) -> Result<HashAlg> {
        Ok(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            other => return Err(unsupported("hash-alg", other)),
        })
    }

    /// The hash's name.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }
}

fn unsupported(what: &'static str, value: &str) -> Error {
    Error::CryptoUnsupported {
        what,
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in [CipherAlg::Aes128, CipherAlg::Aes192, CipherAlg::Aes256] {
            assert_eq!(CipherAlg::parse(a.name()).unwrap(), a);
            assert_eq!(CipherAlg::from_luks("aes", a.key_len()).unwrap(), a);
        }
        for m in [CipherMode::Ecb, CipherMode::Cbc, CipherMode::Xts] {
            assert_eq!(CipherMode::parse(m.name()).unwrap(), m);
        }
        for i in [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv] {
            assert_eq!(IvGenAlg::parse(i.name()).unwrap(), i);
        }
        for h in [
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            assert_eq!(HashAlg::parse(h.name()).unwrap(), h);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_option() {
        let e = CipherAlg::parse("des").unwrap_err().to_string();
        assert!(e.contains("cipher-alg") && e.contains("des"), "{e}");
        assert!(HashAlg::parse("md4").is_err());
        assert!(CipherAlg::from_luks("twofish", 32).is_err());
    }
}
