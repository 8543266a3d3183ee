//! The first stage of option parsing (`qemu_opts_do_parse`): names checked
//! against the format's table, boolean, number and size values parsed,
//! later settings overriding earlier ones; and the `Formatting '...',
//! fmt=... k=v ...` line that `qemu-img create` prints from the result.

use super::list::{split_options, OptPair, OptionList};
use super::table::{options_for, OptDesc, OptType};
use super::{ImageFormat, OptsError};
use crate::size::parse_option_size;

/// A value that passed the syntax check of its option type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptValue {
    /// The text as given (after `,,` unescaping; `on`/`off` for flags).
    pub raw: String,
    /// The parsed number for `Size` and `Number` options.
    pub number: Option<u64>,
    /// The parsed boolean for `Bool` options.
    pub boolean: Option<bool>,
}

/// Options after the first stage: names known, values syntactically valid,
/// later settings overriding earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    format: ImageFormat,
    values: Vec<(&'static OptDesc, OptValue)>,
}

impl ParsedOptions {
    /// No options set.
    pub fn empty(format: ImageFormat) -> Self {
        Self {
            format,
            values: Vec::new(),
        }
    }

    /// Parses an accumulated `-o` list for `format`, failing on the first
    /// unknown name or malformed value as qemu does.
    pub fn parse(format: ImageFormat, list: &OptionList) -> Result<Self, OptsError> {
        Self::parse_str(format, list.as_str())
    }

    /// Like [`ParsedOptions::parse`] on a plain string.
    pub fn parse_str(format: ImageFormat, list: &str) -> Result<Self, OptsError> {
        let mut parsed = Self::empty(format);
        for OptPair { key, value, .. } in split_options(list) {
            parsed.set(&key, &value)?;
        }
        Ok(parsed)
    }

    /// The format these options are for.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// Sets one option (as `qemu_opt_set`), checking name and syntax.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptsError> {
        let desc = options_for(self.format)
            .into_iter()
            .find(|d| d.name == key)
            .ok_or_else(|| OptsError::InvalidParameter(key.to_owned()))?;
        let parsed = parse_value(desc, value)?;
        self.values.retain(|(d, _)| d.name != key);
        self.values.push((desc, parsed));
        Ok(())
    }

    /// Sets one of `amend`'s key slot options (`encrypt.state`,
    /// `encrypt.keyslot`, ...), which are not creation options.
    pub fn set_amend_key(&mut self, key: &str, value: &str) -> Result<(), OptsError> {
        let desc = super::table::QCOW2_AMEND_ONLY
            .iter()
            .find(|d| d.name == key)
            .ok_or_else(|| OptsError::InvalidParameter(key.to_owned()))?;
        let parsed = parse_value(desc, value)?;
        self.values.retain(|(d, _)| d.name != key);
        self.values.push((desc, parsed));
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&OptValue> {
        self.values
            .iter()
            .find(|(d, _)| d.name == key)
            .map(|(_, v)| v)
    }

    /// Applies the `SIZE` positional of `create`: an error if `-o size=`
    /// was also given ("The image size must be specified only once").
    pub fn set_size_argument(&mut self, size: u64) -> Result<(), OptsError> {
        if self.get("size").is_some() {
            return Err(OptsError::SizeSpecifiedTwice);
        }
        self.set("size", &size.to_string())
    }

    /// Sets the size only if none was given (size taken from a backing
    /// image).
    pub fn set_default_size(&mut self, size: u64) -> Result<(), OptsError> {
        if self.get("size").is_none() {
            self.set("size", &size.to_string())?;
        }
        Ok(())
    }

    /// Applies `-b` and `-F`, overriding `-o backing_file=`/`backing_fmt=`.
    pub fn set_backing(&mut self, file: Option<&str>, fmt: Option<&str>) -> Result<(), OptsError> {
        if let Some(file) = file {
            self.set("backing_file", file)
                .map_err(|_| OptsError::BackingNotSupported(self.format.name().to_owned()))?;
        }
        if let Some(fmt) = fmt {
            self.set("backing_fmt", fmt)
                .map_err(|_| OptsError::BackingFmtNotSupported(self.format.name().to_owned()))?;
        }
        Ok(())
    }

    /// The line `qemu-img create` prints before creating (without `-q`):
    /// `Formatting 'FILE', fmt=FMT k=v ...`, options in declaration order,
    /// unset options with defaults shown with their default, commas in
    /// string values doubled. No trailing newline.
    pub fn formatting_line(&self, filename: &str) -> String {
        let mut line = format!("Formatting '{}', fmt={} ", filename, self.format.name());
        let mut parts = Vec::new();
        for desc in options_for(self.format) {
            let set = self.get(desc.name);
            let text = match (set, desc.default) {
                (Some(value), _) => match desc.kind {
                    OptType::Str => value.raw.replace(',', ",,"),
                    // qemu prints these through PRId64.
                    OptType::Size | OptType::Number => {
                        (value.number.unwrap_or_default() as i64).to_string()
                    }
                    OptType::Bool => value.raw.clone(),
                },
                (None, Some(default)) => default.to_owned(),
                (None, None) => continue,
            };
            parts.push(format!("{}={}", desc.name, text));
        }
        line.push_str(&parts.join(" "));
        line
    }
}

/// Checks one value against its option type.
fn parse_value(desc: &OptDesc, value: &str) -> Result<OptValue, OptsError> {
    let mut parsed = OptValue {
        raw: value.to_owned(),
        number: None,
        boolean: None,
    };
    match desc.kind {
        OptType::Str => {}
        OptType::Bool => parsed.boolean = Some(parse_bool(desc.name, value)?),
        OptType::Size => parsed.number = Some(parse_option_size(desc.name, value)?),
        OptType::Number => parsed.number = Some(parse_number(desc.name, value)?),
    }
    Ok(parsed)
}

/// qemu's `qapi_bool_parse`: `on yes true y` / `off no false n`.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, OptsError> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(OptsError::BoolExpected(name.to_owned())),
    }
}

/// A number option: C syntax with base prefix (`16`, `0x10`, `020`), a
/// leading `-` wrapping around as `strtoull` does.
pub fn parse_number(name: &str, value: &str) -> Result<u64, OptsError> {
    let expects = || OptsError::NumberExpected(name.to_owned());
    let (negative, unsigned) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    let (radix, digits) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (16, hex)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (8, &unsigned[1..])
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(expects());
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| OptsError::NumberTooLarge {
        name: name.to_owned(),
        value: value.to_owned(),
    })?;
    Ok(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formatting(format: ImageFormat, list: &str, size: Option<u64>) -> String {
        let mut parsed = ParsedOptions::parse_str(format, list).unwrap();
        if let Some(size) = size {
            parsed.set_size_argument(size).unwrap();
        }
        parsed.formatting_line("x")
    }

    /// Lines printed by `qemu-img create` (qemu-img 10.0.2).
    #[test]
    fn formatting_line_matches_qemu_img() {
        assert_eq!(
            formatting(ImageFormat::Qcow2, "", Some(1 << 30)),
            "Formatting 'x', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1073741824 lazy_refcounts=off refcount_bits=16"
        );
        assert_eq!(
            formatting(
                ImageFormat::Qcow2,
                "size=1M,compat=1.1,backing_file=base.qcow2,backing_fmt=qcow2,data_file=d,\
                 data_file_raw=on,cluster_size=4k,extended_l2=on,preallocation=off,\
                 lazy_refcounts=on,refcount_bits=8,compression_type=zstd",
                None
            ),
            "Formatting 'x', fmt=qcow2 cluster_size=4096 extended_l2=on preallocation=off \
             compression_type=zstd size=1048576 compat=1.1 backing_file=base.qcow2 \
             backing_fmt=qcow2 data_file=d data_file_raw=on lazy_refcounts=on refcount_bits=8"
        );
        assert_eq!(
            formatting(ImageFormat::Qcow2, "lazy_refcounts=yes", Some(1 << 30)),
            "Formatting 'x', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1073741824 lazy_refcounts=yes refcount_bits=16"
        );
        assert_eq!(
            formatting(ImageFormat::Qcow2, "nolazy_refcounts", Some(1 << 20)),
            "Formatting 'x', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1048576 lazy_refcounts=off refcount_bits=16"
        );
        assert_eq!(
            formatting(ImageFormat::Qcow2, "data_file=a,,b", Some(1 << 30)),
            "Formatting 'x', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1073741824 data_file=a,,b lazy_refcounts=off refcount_bits=16"
        );
        assert_eq!(
            formatting(ImageFormat::Raw, "", Some(1 << 20)),
            "Formatting 'x', fmt=raw size=1048576"
        );
        assert_eq!(
            formatting(ImageFormat::Raw, "preallocation=falloc", Some(1 << 20)),
            "Formatting 'x', fmt=raw size=1048576 preallocation=falloc"
        );
        assert_eq!(
            formatting(ImageFormat::Qcow2, "compat=v2", Some(1 << 20)),
            "Formatting 'x', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1048576 compat=v2 lazy_refcounts=off refcount_bits=16"
        );
    }

    #[test]
    fn backing_options_override_and_need_support() {
        let mut parsed = ParsedOptions::parse_str(ImageFormat::Qcow2, "backing_file=old").unwrap();
        parsed
            .set_backing(Some("base.qcow2"), Some("qcow2"))
            .unwrap();
        parsed.set_size_argument(1 << 30).unwrap();
        assert_eq!(
            parsed.formatting_line("x,y"),
            "Formatting 'x,y', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib \
             size=1073741824 backing_file=base.qcow2 backing_fmt=qcow2 lazy_refcounts=off \
             refcount_bits=16"
        );
        let mut raw = ParsedOptions::empty(ImageFormat::Raw);
        assert_eq!(
            raw.set_backing(Some("b"), None).unwrap_err().to_string(),
            "Backing file not supported for file format 'raw'"
        );
    }

    #[test]
    fn stage_one_errors_match_qemu_img() {
        let err = |format, list: &str| {
            ParsedOptions::parse_str(format, list)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(ImageFormat::Qcow2, "foo=bar"),
            "Invalid parameter 'foo'"
        );
        assert_eq!(
            err(ImageFormat::Raw, "cluster_size=4k"),
            "Invalid parameter 'cluster_size'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "help=1"),
            "Invalid parameter 'help'"
        );
        assert_eq!(err(ImageFormat::Qcow2, "=3"), "Invalid parameter ''");
        assert_eq!(
            err(ImageFormat::Qcow2, "cluster_size=abc"),
            "Parameter 'cluster_size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "cluster_size=99999999999999999999"),
            "Value '99999999999999999999' is out of range for parameter 'cluster_size'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "refcount_bits=abc"),
            "Parameter 'refcount_bits' expects a number"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "refcount_bits= 16"),
            "Parameter 'refcount_bits' expects a number"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "refcount_bits=99999999999999999999"),
            "Value '99999999999999999999' is too large for parameter 'refcount_bits'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "lazy_refcounts=maybe"),
            "Parameter 'lazy_refcounts' expects 'on' or 'off'"
        );
        assert_eq!(
            err(ImageFormat::Qcow2, "size=-1"),
            "Value '-1' is out of range for parameter 'size'"
        );
        let mut parsed = ParsedOptions::parse_str(ImageFormat::Qcow2, "size=1G").unwrap();
        assert_eq!(
            parsed.set_size_argument(1).unwrap_err().to_string(),
            "The image size must be specified only once"
        );
    }

    #[test]
    fn numbers_use_c_syntax() {
        assert_eq!(parse_number("n", "16"), Ok(16));
        assert_eq!(parse_number("n", "0x10"), Ok(16));
        assert_eq!(parse_number("n", "010"), Ok(8));
        assert_eq!(parse_number("n", "0"), Ok(0));
        assert_eq!(parse_number("n", "-1"), Ok(u64::MAX));
        assert!(parse_number("n", "").is_err());
        assert!(parse_number("n", "08").is_err());
    }
}
