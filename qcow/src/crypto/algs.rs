//! The algorithm names LUKS headers and qemu-img's `encrypt.*` options
//! use: ciphers, cipher modes, IV generators and hashes, parsed from
//! QEMU's spellings into closed enums.

use crate::error::{Error, Result};

/// A block cipher with its key size: the ciphers QEMU's LUKS driver
/// maps to LUKS names (`crypto/block-luks.c`), less SM4, which the QEMU
/// this project is held to was built without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key.
    Aes256,
    /// CAST-128 with a 128-bit key (64-bit blocks).
    Cast5_128,
    /// Serpent with a 128-bit key.
    Serpent128,
    /// Serpent with a 192-bit key.
    Serpent192,
    /// Serpent with a 256-bit key.
    Serpent256,
    /// Twofish with a 128-bit key.
    Twofish128,
    /// Twofish with a 192-bit key.
    Twofish192,
    /// Twofish with a 256-bit key.
    Twofish256,
}

/// Every cipher, with qemu-img's name, its LUKS family name and its key
/// length in bytes.
const CIPHERS: [(CipherAlg, &str, &str, usize); 10] = [
    (CipherAlg::Aes128, "aes-128", "aes", 16),
    (CipherAlg::Aes192, "aes-192", "aes", 24),
    (CipherAlg::Aes256, "aes-256", "aes", 32),
    (CipherAlg::Cast5_128, "cast5-128", "cast5", 16),
    (CipherAlg::Serpent128, "serpent-128", "serpent", 16),
    (CipherAlg::Serpent192, "serpent-192", "serpent", 24),
    (CipherAlg::Serpent256, "serpent-256", "serpent", 32),
    (CipherAlg::Twofish128, "twofish-128", "twofish", 16),
    (CipherAlg::Twofish192, "twofish-192", "twofish", 24),
    (CipherAlg::Twofish256, "twofish-256", "twofish", 32),
];

impl CipherAlg {
    /// Every cipher this crate implements.
    pub const ALL: [CipherAlg; 10] = [
        CipherAlg::Aes128,
        CipherAlg::Aes192,
        CipherAlg::Aes256,
        CipherAlg::Cast5_128,
        CipherAlg::Serpent128,
        CipherAlg::Serpent192,
        CipherAlg::Serpent256,
        CipherAlg::Twofish128,
        CipherAlg::Twofish192,
        CipherAlg::Twofish256,
    ];

    fn row(self) -> (CipherAlg, &'static str, &'static str, usize) {
        *CIPHERS
            .iter()
            .find(|r| r.0 == self)
            .expect("every cipher has a row")
    }

    /// Parses qemu-img's `cipher-alg` value (`aes-256`).
    pub fn parse(name: &str) -> Result<CipherAlg> {
        CIPHERS
            .iter()
            .find(|r| r.1 == name)
            .map(|r| r.0)
            .ok_or_else(|| unsupported("cipher-alg", name))
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The cipher's key length in bytes.
    pub fn key_len(self) -> usize {
        self.row().3
    }

    /// The cipher's block length in bytes (the IV length of its modes).
    pub fn block_len(self) -> usize {
        match self {
            CipherAlg::Cast5_128 => 8,
            _ => 16,
        }
    }

    /// The cipher of a LUKS header's `cipher_name` with a key of
    /// `key_len` bytes (the cipher's own key, half the master key in XTS).
    pub fn from_luks(name: &str, key_len: usize) -> Result<CipherAlg> {
        CIPHERS
            .iter()
            .find(|r| r.2 == name && r.3 == key_len)
            .map(|r| r.0)
            .ok_or_else(|| Error::CryptoUnsupported {
                what: "LUKS cipher",
                value: format!("Algorithm '{name}' with key size {key_len} bytes not supported"),
            })
    }

    /// The name a LUKS header records (`aes`, `serpent`).
    pub fn luks_name(self) -> &'static str {
        self.row().2
    }

    /// The cipher ESSIV encrypts sector numbers with when its key is a
    /// `digest_len`-byte hash: this cipher if the lengths agree, else the
    /// same family's cipher of that key length, as QEMU's
    /// `qcrypto_block_luks_essiv_cipher` picks it (with its messages).
    pub fn essiv_cipher(self, digest_len: usize) -> Result<CipherAlg> {
        if digest_len == self.key_len() {
            return Ok(self);
        }
        let family = match self.luks_name() {
            "aes" => "AES",
            "serpent" => "Serpent",
            "twofish" => "Twofish",
            _ => {
                return Err(Error::CryptoUnsupported {
                    what: "ivgen-alg",
                    value: format!("Cipher {} not supported with essiv", self.name()),
                })
            }
        };
        CIPHERS
            .iter()
            .find(|r| r.2 == self.luks_name() && r.3 == digest_len)
            .map(|r| r.0)
            .ok_or_else(|| Error::CryptoUnsupported {
                what: "ivgen-hash-alg",
                value: format!("No {family} cipher with key size {digest_len} available"),
            })
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
    /// Counter mode: the IV is the first counter block, incremented as a
    /// big-endian number per block (nettle's `ctr_crypt`).
    Ctr,
}

impl CipherMode {
    /// Parses qemu-img's `cipher-mode` value.
    pub fn parse(name: &str) -> Result<CipherMode> {
        Ok(match name {
            "ecb" => CipherMode::Ecb,
            "cbc" => CipherMode::Cbc,
            "xts" => CipherMode::Xts,
            "ctr" => CipherMode::Ctr,
            other => return Err(unsupported("cipher-mode", other)),
        })
    }

    /// qemu-img's spelling.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Ecb => "ecb",
            CipherMode::Cbc => "cbc",
            CipherMode::Xts => "xts",
            CipherMode::Ctr => "ctr",
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
    /// MD5 (QEMU accepts it for LUKS too).
    Md5,
    /// RIPEMD-160.
    Ripemd160,
}

impl HashAlg {
    /// Every hash this crate implements.
    pub const ALL: [HashAlg; 7] = [
        HashAlg::Sha1,
        HashAlg::Sha224,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
        HashAlg::Md5,
        HashAlg::Ripemd160,
    ];

    /// Parses qemu-img's (and LUKS's) hash name.
    pub fn parse(name: &str) -> Result<HashAlg> {
        Ok(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            "md5" => HashAlg::Md5,
            "ripemd160" => HashAlg::Ripemd160,
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
            HashAlg::Md5 => "md5",
            HashAlg::Ripemd160 => "ripemd160",
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
            HashAlg::Md5 => 16,
            HashAlg::Ripemd160 => 20,
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
        for a in CipherAlg::ALL {
            assert_eq!(CipherAlg::parse(a.name()).unwrap(), a);
            assert_eq!(CipherAlg::from_luks(a.luks_name(), a.key_len()).unwrap(), a);
        }
        for m in [
            CipherMode::Ecb,
            CipherMode::Cbc,
            CipherMode::Xts,
            CipherMode::Ctr,
        ] {
            assert_eq!(CipherMode::parse(m.name()).unwrap(), m);
        }
        for i in [IvGenAlg::Plain, IvGenAlg::Plain64, IvGenAlg::Essiv] {
            assert_eq!(IvGenAlg::parse(i.name()).unwrap(), i);
        }
        for h in HashAlg::ALL {
            assert_eq!(HashAlg::parse(h.name()).unwrap(), h);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_option() {
        let e = CipherAlg::parse("des").unwrap_err().to_string();
        assert!(e.contains("cipher-alg") && e.contains("des"), "{e}");
        assert!(HashAlg::parse("md4").is_err());
        assert!(CipherAlg::from_luks("twofish", 20).is_err());
        assert!(CipherAlg::from_luks("sm4", 16).is_err());
    }

    #[test]
    fn essiv_picks_the_family_cipher_of_the_digest_length() {
        assert_eq!(
            CipherAlg::Serpent128.essiv_cipher(32).unwrap(),
            CipherAlg::Serpent256
        );
        assert_eq!(
            CipherAlg::Aes256.essiv_cipher(16).unwrap(),
            CipherAlg::Aes128
        );
        let e = CipherAlg::Twofish128
            .essiv_cipher(20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("No Twofish cipher with key size 20 available"),
            "{e}"
        );
        assert_eq!(
            CipherAlg::Cast5_128.essiv_cipher(16).unwrap(),
            CipherAlg::Cast5_128
        );
        let e = CipherAlg::Cast5_128
            .essiv_cipher(32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Cipher cast5-128 not supported with essiv"),
            "{e}"
        );
    }
}
