//! The `-o key=value,...` list syntax of qemu (`QemuOpts`).
//!
//! Owns the accumulation of several `-o` arguments into one list, the
//! validity check qemu-img applies to each argument, the splitting of a list
//! into `key=value` pairs (`,,` escapes a comma; a bare `key` means
//! `key=on`, a bare `nokey` means `key=off`) and the detection of `help` /
//! `?` requests.

use super::OptsError;

/// One `key=value` element of an option list, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptPair {
    /// Option name (`cluster_size`).
    pub key: String,
    /// Value with `,,` unescaped; `on`/`off` for the flag forms.
    pub value: String,
    /// True when written as a bare flag (`key` or `nokey`, no `=`).
    pub is_flag: bool,
}

/// The accumulated text of every `-o` argument, joined with `,` as
/// qemu-img does (`-o a=1 -o b=2` is `a=1,b=2`; later values win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionList {
    text: Option<String>,
}

impl OptionList {
    /// An empty list (no `-o` given).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a list from the `-o` arguments in command-line order.
    pub fn from_args<I, S>(args: I) -> Result<Self, OptsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::new();
        for arg in args {
            list.accumulate(arg.as_ref())?;
        }
        Ok(list)
    }

    /// Appends one `-o` argument, rejecting it as qemu-img's
    /// `accumulate_options` does (`Invalid option list: ...`).
    pub fn accumulate(&mut self, arg: &str) -> Result<(), OptsError> {
        if !is_valid_option_list(arg) {
            return Err(OptsError::InvalidOptionList(arg.to_owned()));
        }
        self.text = Some(match self.text.take() {
            None => arg.to_owned(),
            Some(existing) => format!("{existing},{arg}"),
        });
        Ok(())
    }

    /// True when no `-o` was given.
    pub fn is_empty(&self) -> bool {
        self.text.is_none()
    }

    /// The joined text, `""` when empty.
    pub fn as_str(&self) -> &str {
        self.text.as_deref().unwrap_or("")
    }

    /// True when the list asks for help (`help` or `?` as a bare flag).
    pub fn has_help(&self) -> bool {
        self.text.as_deref().is_some_and(has_help_option)
    }

    /// Splits the list into pairs (see [`split_options`]).
    pub fn pairs(&self) -> Vec<OptPair> {
        self.text.as_deref().map(split_options).unwrap_or_default()
    }
}

/// qemu-img's `is_valid_option_list`: not empty, not starting with a comma,
/// and not ending in an odd number of commas (an unescaped trailing comma).
pub fn is_valid_option_list(list: &str) -> bool {
    if list.is_empty() || list.starts_with(',') {
        return false;
    }
    let trailing_commas = list.len() - list.trim_end_matches(',').len();
    trailing_commas & 1 == 0
}

/// True when `name` is a help request (`help` or `?`).
pub fn is_help_option(name: &str) -> bool {
    name == "help" || name == "?"
}

/// True when some element of `list` is a bare `help` or `?`.
pub fn has_help_option(list: &str) -> bool {
    split_options(list)
        .iter()
        .any(|pair| pair.is_flag && is_help_option(&pair.key))
}

/// Splits an option list the way qemu's `opts_do_parse` does.
///
/// Names end at the first `=` or `,`; values end at a `,` that is not
/// doubled (`,,` stands for one comma). An element without `=` is a flag:
/// `key` means `key=on`, `nokey` means `key=off`.
pub fn split_options(list: &str) -> Vec<OptPair> {
    let mut pairs = Vec::new();
    let mut rest = list;
    while !rest.is_empty() {
        let name_len = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = &rest[..name_len];
        if rest[name_len..].starts_with('=') {
            let (value, after) = take_value(&rest[name_len + 1..]);
            pairs.push(OptPair {
                key: name.to_owned(),
                value,
                is_flag: false,
            });
            rest = after;
        } else {
            let (key, value) = match name.strip_prefix("no") {
                Some(stripped) => (stripped, "off"),
                None => (name, "on"),
            };
            pairs.push(OptPair {
                key: key.to_owned(),
                value: value.to_owned(),
                is_flag: true,
            });
            rest = &rest[name_len..];
        }
        // Skip the separating comma.
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        }
    }
    pairs
}

/// Reads a value up to the first single comma, unescaping `,,`. Returns
/// the value and the remaining text (starting at the separator, if any).
fn take_value(text: &str) -> (String, &str) {
    let mut value = String::new();
    let mut rest = text;
    loop {
        match rest.find(',') {
            None => {
                value.push_str(rest);
                return (value, "");
            }
            Some(pos) => {
                value.push_str(&rest[..pos]);
                if rest[pos + 1..].starts_with(',') {
                    value.push(',');
                    rest = &rest[pos + 2..];
                } else {
                    return (value, &rest[pos..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &str, is_flag: bool) -> OptPair {
        OptPair {
            key: key.to_owned(),
            value: value.to_owned(),
            is_flag,
        }
    }

    #[test]
    fn validity_matches_qemu_img() {
        // Captured: "" / "a=1," / ",a=1" give "Invalid option list: ...".
        assert!(!is_valid_option_list(""));
        assert!(!is_valid_option_list("cluster_size=4k,"));
        assert!(!is_valid_option_list(",cluster_size=4k"));
        assert!(is_valid_option_list("cluster_size=4k,,"));
        assert!(!is_valid_option_list("cluster_size=4k,,,"));
        assert!(is_valid_option_list("a=1,b=2"));
    }

    #[test]
    fn accumulate_joins_with_commas() {
        let list = OptionList::from_args(["cluster_size=4k", "refcount_bits=8"]).unwrap();
        assert_eq!(list.as_str(), "cluster_size=4k,refcount_bits=8");
        let err = OptionList::from_args(["a=1", "b=2,"]).unwrap_err();
        assert_eq!(err.to_string(), "Invalid option list: b=2,");
        assert!(OptionList::new().is_empty());
    }

    #[test]
    fn splitting() {
        assert_eq!(
            split_options("data_file=a,,b,lazy_refcounts,nocompat"),
            vec![
                pair("data_file", "a,b", false),
                pair("lazy_refcounts", "on", true),
                pair("compat", "off", true),
            ]
        );
        assert_eq!(
            split_options("cluster_size=4k,,"),
            vec![pair("cluster_size", "4k,", false)]
        );
        assert_eq!(split_options("=3"), vec![pair("", "3", false)]);
        assert_eq!(split_options("a="), vec![pair("a", "", false)]);
    }

    #[test]
    fn help_detection() {
        assert!(has_help_option("help"));
        assert!(has_help_option("?"));
        assert!(has_help_option("cluster_size=4k,help"));
        assert!(has_help_option("foo,help"));
        assert!(!has_help_option("help=1"));
        assert!(!has_help_option("cluster_size=help"));
        let list = OptionList::from_args(["a=1", "?"]).unwrap();
        assert!(list.has_help());
    }
}
