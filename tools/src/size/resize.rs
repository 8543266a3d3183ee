//! The `[+-]SIZE` argument of `img resize` and the checks qemu-img applies
//! when turning it into a new virtual size.

use std::fmt;

use super::{parse_option_size, OptionSizeError};

/// The `[+-]SIZE` argument of `resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSize {
    /// `SIZE`: the new virtual size.
    Absolute(u64),
    /// `+SIZE`: grow by this many bytes.
    Grow(u64),
    /// `-SIZE`: shrink by this many bytes.
    Shrink(u64),
}

/// Why a resize request cannot be carried out (qemu-img's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// The size text did not parse.
    #[error(transparent)]
    Size(#[from] OptionSizeError),
    /// The resulting size is zero or negative.
    #[error("New image size must be positive")]
    NotPositive,
    /// Shrinking without `--shrink`. The display includes qemu's warning
    /// line, so print it as `{PROGRAM}: {error}`.
    #[error(
        "Use the --shrink option to perform a shrink operation.\n{prog}: warning: \
         Shrinking an image will delete all data beyond the shrunken image's end. \
         Before performing such an operation, make sure there is no important data there.",
        prog = crate::program()
    )]
    ShrinkNeedsFlag,
}

impl ResizeSize {
    /// Parses `resize`'s size argument: an optional `+` or `-` then a size
    /// as for `-o size=` (errors name the parameter `size`).
    pub fn parse(text: &str) -> Result<Self, ResizeError> {
        if let Some(rest) = text.strip_prefix('+') {
            Ok(Self::Grow(parse_option_size("size", rest)?))
        } else if let Some(rest) = text.strip_prefix('-') {
            Ok(Self::Shrink(parse_option_size("size", rest)?))
        } else {
            Ok(Self::Absolute(parse_option_size("size", text)?))
        }
    }

    /// Computes the new size from the current one, with qemu-img's checks
    /// (64-bit signed arithmetic, "must be positive", `--shrink` required to
    /// shrink). The caller prints `Image resized.` on success (unless `-q`).
    pub fn resolve(self, current_size: u64, allow_shrink: bool) -> Result<u64, ResizeError> {
        let current = current_size as i64;
        let total = match self {
            Self::Absolute(n) => n as i64,
            Self::Grow(n) => current.wrapping_add(n as i64),
            Self::Shrink(n) => current.wrapping_sub(n as i64),
        };
        if total <= 0 {
            return Err(ResizeError::NotPositive);
        }
        if total < current && !allow_shrink {
            return Err(ResizeError::ShrinkNeedsFlag);
        }
        Ok(total as u64)
    }
}

impl fmt::Display for ResizeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absolute(n) => write!(f, "{n}"),
            Self::Grow(n) => write!(f, "+{n}"),
            Self::Shrink(n) => write!(f, "-{n}"),
        }
    }
}

/// What qemu-img prints after a successful resize.
pub const RESIZED_MESSAGE: &str = "Image resized.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROGRAM;

    /// Behaviour of `qemu-img resize` (qemu-img 10.0.2) on a 1 GiB image.
    #[test]
    fn resize_sizes() {
        let gib = 1u64 << 30;
        assert_eq!(ResizeSize::parse("+1G"), Ok(ResizeSize::Grow(gib)));
        assert_eq!(ResizeSize::parse("-1G"), Ok(ResizeSize::Shrink(gib)));
        assert_eq!(ResizeSize::parse("2G"), Ok(ResizeSize::Absolute(2 * gib)));
        assert_eq!(
            ResizeSize::parse("x").unwrap_err().to_string(),
            "Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        );
        assert_eq!(ResizeSize::Grow(gib).resolve(gib, false), Ok(2 * gib));
        assert_eq!(ResizeSize::Shrink(0).resolve(gib, false), Ok(gib));
        assert_eq!(ResizeSize::Grow(0).resolve(gib, false), Ok(gib));
        assert_eq!(
            ResizeSize::Shrink(gib).resolve(gib, true),
            Err(ResizeError::NotPositive)
        );
        assert_eq!(
            ResizeSize::Shrink(10 * gib).resolve(gib, false),
            Err(ResizeError::NotPositive)
        );
        assert_eq!(
            ResizeSize::Grow(9 << 60).resolve(gib, true),
            Err(ResizeError::NotPositive)
        );
        assert_eq!(
            ResizeSize::Grow(8 << 60).resolve(gib, true),
            Err(ResizeError::NotPositive)
        );
        assert_eq!(
            ResizeSize::Absolute(gib).resolve(2 * gib, false),
            Err(ResizeError::ShrinkNeedsFlag)
        );
        assert_eq!(ResizeSize::Absolute(gib).resolve(2 * gib, true), Ok(gib));
        assert_eq!(
            ResizeError::ShrinkNeedsFlag.to_string(),
            format!(
                "Use the --shrink option to perform a shrink operation.\n\
                 {PROGRAM}: warning: Shrinking an image will delete all data beyond the \
                 shrunken image's end. Before performing such an operation, make sure there \
                 is no important data there."
            )
        );
        assert_eq!(ResizeSize::Shrink(5).to_string(), "-5");
    }
}
