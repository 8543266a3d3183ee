//! Domain UUIDs: parsed as libvirt's virUUIDParse reads them (32 hex digits,
//! dashes and spaces between them ignored), printed in the 8-4-4-4-12 form,
//! and made from the kernel's random source (version 4) when absent.

use std::io::Read;

use super::XmlError;

/// A 16-byte domain UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Parses `text` (surrounding white space allowed).
    pub fn parse(text: &str) -> Result<Self, XmlError> {
        let bad = || XmlError::BadValue {
            element: "uuid".to_string(),
            value: super::units::truncate(text),
            reason: "malformed uuid element".to_string(),
        };
        let mut bytes = [0u8; 16];
        let mut digits = 0usize;
        for c in text.trim().chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            let value = c.to_digit(16).ok_or_else(bad)? as u8;
            if digits >= 32 {
                return Err(bad());
            }
            bytes[digits / 2] |= if digits.is_multiple_of(2) {
                value << 4
            } else {
                value
            };
            digits += 1;
        }
        if digits != 32 {
            return Err(bad());
        }
        Ok(Self(bytes))
    }

    /// A new random (version 4) UUID from /dev/urandom.
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u = Uuid::parse(" 6695EB01-f6a4-8304-79aa-97f2502e193f ").unwrap();
        assert_eq!(u.to_string(), "6695eb01-f6a4-8304-79aa-97f2502e193f");
        let u = Uuid::parse("6695eb01f6a4830479aa97f2502e193f").unwrap();
        assert_eq!(u.to_string(), "6695eb01-f6a4-8304-79aa-97f2502e193f");
    }

    #[test]
    fn refuses_malformed() {
        assert!(Uuid::parse("6695eb01").is_err());
        assert!(Uuid::parse("6695eb01f6a4830479aa97f2502e193f00").is_err());
        assert!(Uuid::parse("zz95eb01f6a4830479aa97f2502e193f").is_err());
    }

    #[test]
    fn generated_ones_differ_and_are_v4() {
        let a = Uuid::generate().unwrap();
        let b = Uuid::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string().as_bytes()[14], b'4');
    }
}
