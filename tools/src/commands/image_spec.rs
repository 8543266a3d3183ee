//! The ways qemu-img names an image besides a plain file name: `json:{...}`
//! (QEMU's JSON, single-quoted strings allowed), `--image-opts` option
//! strings (`driver=qcow2,file.driver=file,file.filename=X`) and the
//! `file:` protocol prefix (for names with a colon). Each resolves to the
//! file to open and the format driver it names; options img has no use
//! for (cache modes, locking, read-only) are accepted, anything else is
//! refused in one line rather than ignored.
//!
//! QEMU's blkdebug error injection is named either way too: the
//! `blkdebug:CONFIG:FILE` name puts it under the format (its config file
//! holds the rules), and `{"driver": "blkdebug", "image": {...},
//! "inject-error": [...], "set-state": [...]}` over the image it names.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use qcow::blkdebug::{RuleOptions, Rules};
use qcow::raw_window::Window;

/// Longest option string or `json:` text accepted.
const MAX_SPEC_LEN: usize = 64 * 1024;

/// Options accepted and left to img's defaults (QEMU's cache and locking
/// knobs, which change how the file is opened, not what it holds).
const IGNORED_KEYS: &[&str] = &[
    "cache.direct",
    "cache.no-flush",
    "file.cache.direct",
    "file.cache.no-flush",
    "file.locking",
    "file.aio",
    "read-only",
    "auto-read-only",
    "force-share",
    "discard",
    "detect-zeroes",
    "node-name",
    "file.node-name",
];

/// An image named as qemu-img accepts it, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The file to open.
    pub filename: String,
    /// The format named by the spec (or `-f`), if any.
    pub format: Option<String>,
    /// The key secret ids of encrypted layers by depth (0 the image,
    /// 1 its backing file, ...): `encrypt.key-secret`,
    /// `backing.encrypt.key-secret`, ...
    pub key_secrets: Vec<Option<String>>,
    /// `cache.direct=on`: QEMU then reads through O_DIRECT, whose
    /// alignment shows in block status (see `map`).
    pub direct_io: bool,
    /// The size of a `null-co` device named instead of a file (see
    /// [`super::null_co`]).
    pub null_size: Option<u64>,
    /// A blkdebug layer named with the image, if any.
    pub blkdebug: Option<BlkdebugSpec>,
    /// A raw node's `offset`/`size` window over the file, if one is named
    /// (`{"driver": "raw", "size": N, ...}` as the image or as its file).
    pub window: Option<Window>,
}

/// A blkdebug layer: its rules, and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkdebugSpec {
    /// The rules of its config file and options.
    pub rules: Rules,
    /// Over the format (the json form with a format driver in `image`),
    /// rather than under it, on the file.
    pub over_format: bool,
}

/// Most `inject-error` or `set-state` list entries read from options.
const MAX_LISTED_RULES: usize = 1024;

/// Deepest `backing.` nesting of key secrets accepted.
const MAX_KEYED_DEPTH: usize = 16;

/// The depth of a key secret option (`encrypt.key-secret` 0,
/// `backing.encrypt.key-secret` 1, ...; luks's `key-secret` too), or of
/// a backing node's driver and file options, which name the layer the
/// image records (accepted, not reopened).
fn layer_option(key: &str) -> Option<(usize, bool)> {
    let mut rest = key;
    let mut depth = 0;
    while let Some(r) = rest.strip_prefix("backing.") {
        rest = r;
        depth += 1;
    }
    if depth > MAX_KEYED_DEPTH {
        return None;
    }
    match rest {
        "encrypt.key-secret" | "key-secret" => Some((depth, true)),
        "driver" | "file.filename" | "file.driver" if depth > 0 => Some((depth, false)),
        _ => None,
    }
}

/// Resolves `name` (with `-f`'s `format`): an option string when
/// `image_opts`, else `json:`, `file:` or a plain file name. A blkdebug
/// layer is refused: only the commands that open through
/// [`super::open_named_for`] put one in place ([`resolve_layered`]).
pub fn resolve(name: &str, format: Option<&str>, image_opts: bool) -> Result<ImageSpec> {
    let spec = resolve_windowed(name, format, image_opts)?;
    if spec.window.is_some() {
        bail!(
            "Could not open '{name}': this img command does not take raw nodes with offset or size yet"
        );
    }
    Ok(spec)
}

/// [`resolve`] for the commands that open the file under the raw window
/// (`offset`/`size`) it names (see [`super::windowed`]).
pub fn resolve_windowed(name: &str, format: Option<&str>, image_opts: bool) -> Result<ImageSpec> {
    let spec = resolve_layered(name, format, image_opts)?;
    if spec.blkdebug.is_some() {
        bail!("Could not open '{name}': this img command does not take blkdebug images yet");
    }
    Ok(spec)
}

/// [`resolve`] that also accepts a blkdebug layer.
pub fn resolve_layered(name: &str, format: Option<&str>, image_opts: bool) -> Result<ImageSpec> {
    let plain = |filename: &str| ImageSpec {
        filename: filename.to_string(),
        format: format.map(str::to_string),
        key_secrets: Vec::new(),
        direct_io: false,
        null_size: None,
        blkdebug: None,
        window: None,
    };
    if name.len() > MAX_SPEC_LEN {
        bail!("image name longer than {MAX_SPEC_LEN} bytes");
    }
    let options = if image_opts {
        parse_option_string(name)?
    } else if let Some(json) = name.strip_prefix("json:") {
        parse_json(json)?
    } else if let Some(path) = name.strip_prefix("file:") {
        // As QEMU does, a relative name that would read as another
        // protocol prefix ("a:b") becomes "./a:b".
        let end = path.find(['/', ':']).unwrap_or(path.len());
        if path[end..].starts_with(':') {
            return Ok(plain(&format!("./{path}")));
        }
        return Ok(plain(path));
    } else if let Some(rest) = name.strip_prefix("blkdebug:") {
        // blkdebug:CONFIG:FILE, the config file's name possibly empty.
        let Some((config, file)) = rest.split_once(':') else {
            bail!("Could not open '{name}': blkdebug requires both config file and image path");
        };
        let mut rules = Rules::default();
        if !config.is_empty() {
            read_config(name, config, &mut rules)?;
        }
        return Ok(ImageSpec {
            blkdebug: Some(BlkdebugSpec {
                rules,
                over_format: false,
            }),
            ..plain(file)
        });
    } else if name.starts_with("null-co://") {
        return Ok(ImageSpec {
            null_size: Some(super::null_co::DEFAULT_SIZE),
            ..plain(name)
        });
    } else {
        return Ok(plain(name));
    };
    if options.get("driver").map(String::as_str) == Some("null-co") {
        return null_co(name, &options);
    }
    if options.get("driver").map(String::as_str) == Some("blkdebug") {
        return blkdebug(name, &options);
    }
    from_options(name, &options, format)
}

/// The target of a `json:` backing file name, which QEMU reads as the
/// options it holds: their file name as it is (not relative to the image
/// that records it), their format driver and raw window. Layers img
/// reads only at the top (blkdebug, null-co) are refused.
pub fn backing_target(name: &str) -> qcow::Result<qcow::backing_name::BackingTarget> {
    let invalid = |reason: String| qcow::backing_name::invalid(name, reason);
    let spec = resolve_layered(name, None, false).map_err(|e| invalid(e.to_string()))?;
    if spec.blkdebug.is_some() || spec.null_size.is_some() {
        return Err(invalid(format!(
            "Could not open '{name}': img does not open this driver as a backing file"
        )));
    }
    let format = spec
        .format
        .as_deref()
        .map(qcow::fs::Format::parse)
        .transpose()?;
    Ok(qcow::backing_name::BackingTarget {
        path: spec.filename.into(),
        format,
        window: spec.window,
    })
}

/// Reads a blkdebug config file into `rules`.
fn read_config(name: &str, config: &str, rules: &mut Rules) -> Result<()> {
    let len = std::fs::metadata(config).map(|m| m.len()).unwrap_or(0);
    if len > qcow::blkdebug::MAX_CONFIG_LEN as u64 {
        bail!(
            "Could not open '{name}': blkdebug config file '{config}' is larger than {} bytes",
            qcow::blkdebug::MAX_CONFIG_LEN
        );
    }
    let text = std::fs::read_to_string(config).map_err(|e| {
        anyhow!(
            "Could not open '{name}': Could not read blkdebug config file: {}",
            super::os_text(&e)
        )
    })?;
    rules
        .parse_config(&text)
        .map_err(|e| anyhow!("Could not open '{name}': {config}: {}", blkdebug_text(&e)))
}

/// A blkdebug error's text without the crate's `unsupported: ` prefix.
fn blkdebug_text(e: &qcow::Error) -> String {
    match e {
        qcow::Error::Unsupported(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A blkdebug layer named by options over the image its `image` options
/// (or file name) name.
fn blkdebug(name: &str, options: &BTreeMap<String, String>) -> Result<ImageSpec> {
    let mut rules = Rules::default();
    if let Some(config) = options.get("config") {
        read_config(name, config, &mut rules)?;
    }
    let mut listed: [BTreeMap<usize, RuleOptions>; 2] = Default::default();
    let mut image = BTreeMap::new();
    for (key, value) in options {
        if let Some(inner) = key.strip_prefix("image.") {
            image.insert(inner.to_string(), value.clone());
            continue;
        }
        let list = match key.split_once('.') {
            Some(("inject-error", rest)) => Some((0, rest)),
            Some(("set-state", rest)) => Some((1, rest)),
            _ => None,
        };
        if let Some((which, rest)) = list {
            let (index, option) = rest
                .split_once('.')
                .and_then(|(i, o)| Some((i.parse::<usize>().ok()?, o)))
                .filter(|(i, _)| *i < MAX_LISTED_RULES)
                .ok_or_else(|| anyhow!("Could not open '{name}': Invalid parameter '{key}'"))?;
            listed[which]
                .entry(index)
                .or_default()
                .push((option.to_string(), value.clone()));
            continue;
        }
        match key.as_str() {
            "driver" | "config" => {}
            "image" => {
                image.insert("filename".to_string(), value.clone());
            }
            k if IGNORED_KEYS.contains(&k) => {}
            other => {
                bail!("Could not open '{name}': img's blkdebug does not take the option '{other}'")
            }
        }
    }
    let rule_error = |e: qcow::Error| anyhow!("Could not open '{name}': {}", blkdebug_text(&e));
    for rule in listed[0].values() {
        rules.add_inject_error(rule).map_err(rule_error)?;
    }
    for rule in listed[1].values() {
        rules.add_set_state(rule).map_err(rule_error)?;
    }
    let over_format = !matches!(image.get("driver").map(String::as_str), None | Some("file"));
    let inner = from_options(name, &image, None)?;
    Ok(ImageSpec {
        format: inner.format.clone().or_else(|| Some("raw".into())),
        blkdebug: Some(BlkdebugSpec { rules, over_format }),
        ..inner
    })
}

/// A `null-co` device named by options: `size` and `read-zeroes` (its
/// reads are zeros either way), `latency-ns` accepted.
fn null_co(name: &str, options: &BTreeMap<String, String>) -> Result<ImageSpec> {
    let mut size = super::null_co::DEFAULT_SIZE;
    for (key, value) in options {
        match key.as_str() {
            "driver" | "read-zeroes" | "latency-ns" => {}
            "size" => {
                size = value.parse().map_err(|_| {
                    anyhow!(
                        "Could not open '{name}': Parameter 'size' expects a non-negative number below 2^64"
                    )
                })?
            }
            _ => bail!(
                "Could not open '{name}': Block format 'null-co' does not support the option '{key}'"
            ),
        }
    }
    Ok(ImageSpec {
        filename: name.to_string(),
        format: Some("raw".into()),
        key_secrets: Vec::new(),
        direct_io: false,
        null_size: Some(size),
        blkdebug: None,
        window: None,
    })
}

/// The file and format an option map names.
fn from_options(
    name: &str,
    options: &BTreeMap<String, String>,
    format: Option<&str>,
) -> Result<ImageSpec> {
    let driver = options.get("driver").map(String::as_str);
    let file_driver = options.get("file.driver").map(String::as_str);
    // A raw node as the image's file ("file": {"driver": "raw", "file":
    // {...}}) reads a window of the file it names.
    let raw_file = file_driver == Some("raw");
    let (file_key, file_driver) = if raw_file {
        (
            "file.file.filename",
            options.get("file.file.driver").map(String::as_str),
        )
    } else {
        ("file.filename", file_driver)
    };
    let (filename, format) = match driver {
        Some("file") | None if options.contains_key("filename") => {
            (options.get("filename"), format.map(str::to_string))
        }
        Some(d) => (options.get(file_key), Some(d.to_string())),
        None => (options.get(file_key), format.map(str::to_string)),
    };
    if !matches!(file_driver, None | Some("file")) {
        bail!(
            "Could not open '{name}': img opens images on the 'file' protocol only, not '{}'",
            file_driver.unwrap_or_default()
        );
    }
    // The window's options: on the raw file node, or on the image when it
    // is raw itself.
    let window_prefix = if raw_file {
        Some("file.")
    } else if format.as_deref() == Some("raw") {
        Some("")
    } else {
        None
    };
    let window = match window_prefix {
        Some(prefix) => window(name, options, prefix)?,
        None => None,
    };
    let mut key_secrets: Vec<Option<String>> = Vec::new();
    for (key, value) in options {
        if let Some((depth, true)) = layer_option(key) {
            if key_secrets.len() <= depth {
                key_secrets.resize(depth + 1, None);
            }
            key_secrets[depth] = Some(value.clone());
        }
    }
    for key in options.keys() {
        let window_key = window_prefix.is_some_and(|p| {
            key.strip_prefix(p)
                .is_some_and(|k| matches!(k, "offset" | "size"))
        });
        let raw_file_key = raw_file
            && (matches!(key.as_str(), "file.file.filename" | "file.file.driver")
                || key
                    .strip_prefix("file.")
                    .is_some_and(|k| IGNORED_KEYS.contains(&k)));
        let known = matches!(
            key.as_str(),
            "driver" | "filename" | "file.filename" | "file.driver"
        ) || window_key
            || raw_file_key
            || IGNORED_KEYS.contains(&key.as_str())
            || layer_option(key).is_some();
        if !known {
            bail!(
                "Could not open '{name}': Block format '{}' does not support the option '{key}'",
                format.as_deref().unwrap_or("file")
            );
        }
    }
    let Some(filename) = filename else {
        bail!("Could not open '{name}': A block device must be specified for \"file\"");
    };
    let format = match format.as_deref() {
        Some("file") => None,
        _ => format,
    };
    let direct_io = ["cache.direct", "file.cache.direct"]
        .iter()
        .any(|k| matches!(options.get(*k).map(String::as_str), Some("on" | "true")));
    Ok(ImageSpec {
        filename: filename.clone(),
        format,
        key_secrets,
        direct_io,
        null_size: None,
        blkdebug: None,
        window,
    })
}

/// The `offset` and `size` options of a raw node (keys under `prefix`),
/// if either is given.
fn window(name: &str, options: &BTreeMap<String, String>, prefix: &str) -> Result<Option<Window>> {
    let number = |key: &str| -> Result<Option<u64>> {
        let Some(value) = options.get(&format!("{prefix}{key}")) else {
            return Ok(None);
        };
        value.parse::<u64>().map(Some).map_err(|_| {
            anyhow!(
                "Could not open '{name}': Parameter '{key}' expects a non-negative number below 2^64"
            )
        })
    };
    let (offset, size) = (number("offset")?, number("size")?);
    if offset.is_none() && size.is_none() {
        return Ok(None);
    }
    Ok(Some(Window {
        offset: offset.unwrap_or(0),
        size,
    }))
}

/// QEMU's option string: `key=value` pairs split by commas, a doubled
/// comma standing for a comma in a value; a bare first word is the
/// file name.
fn parse_option_string(text: &str) -> Result<BTreeMap<String, String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    let mut options = BTreeMap::new();
    for (i, part) in parts.into_iter().enumerate() {
        match part.split_once('=') {
            Some((key, value)) => {
                options.insert(key.to_string(), value.to_string());
            }
            None if i == 0 && !part.is_empty() => {
                options.insert("file.filename".to_string(), part);
            }
            None => bail!("Invalid parameter '{part}'"),
        }
    }
    Ok(options)
}

/// `json:` text as QEMU reads it (single-quoted strings allowed), flattened
/// into dotted keys (`{"file": {"filename": X}}` is `file.filename`).
fn parse_json(text: &str) -> Result<BTreeMap<String, String>> {
    let value: serde_json::Value = serde_json::from_str(&double_quoted(text))
        .map_err(|e| anyhow!("Could not parse JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        bail!("Invalid JSON object given");
    };
    let mut out = BTreeMap::new();
    flatten("", &map, &mut out)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    out: &mut BTreeMap<String, String>,
) -> Result<()> {
    for (key, value) in map {
        let key = format!("{prefix}{key}");
        match value {
            serde_json::Value::Object(inner) => flatten(&format!("{key}."), inner, out)?,
            serde_json::Value::String(s) => {
                out.insert(key, s.clone());
            }
            serde_json::Value::Bool(b) => {
                out.insert(key, if *b { "on" } else { "off" }.to_string());
            }
            serde_json::Value::Number(n) => {
                out.insert(key, n.to_string());
            }
            // QEMU's lists flatten to `key.0`, `key.1`, ...
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut one = serde_json::Map::new();
                    one.insert(i.to_string(), item.clone());
                    flatten(&format!("{key}."), &one, out)?;
                }
            }
            _ => bail!("Invalid value for option '{key}'"),
        }
    }
    Ok(())
}

/// Rewrites QEMU's single-quoted JSON strings as double-quoted ones.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'') => {
                quote = Some('\'');
                out.push('"');
            }
            (None, '"') => {
                quote = Some('"');
                out.push('"');
            }
            (Some(q), '\\') => {
                let next = chars.next().unwrap_or('\\');
                if q == '\'' && next == '\'' {
                    out.push('\'');
                } else {
                    out.push('\\');
                    out.push(next);
                }
            }
            (Some('\''), '"') => out.push_str("\\\""),
            (Some(q), c) if c == q => {
                quote = None;
                out.push('"');
            }
            (_, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, image_opts: bool) -> ImageSpec {
        resolve(name, None, image_opts).unwrap()
    }

    #[test]
    fn plain_and_file_prefixed_names() {
        assert_eq!(spec("a.qcow2", false).filename, "a.qcow2");
        assert_eq!(spec("file:dir/a:b.qcow2", false).filename, "dir/a:b.qcow2");
        assert_eq!(spec("file:/d/a:b.qcow2", false).filename, "/d/a:b.qcow2");
        assert_eq!(spec("file:a:b.qcow2", false).filename, "./a:b.qcow2");
    }

    #[test]
    fn key_secrets_by_layer() {
        let s = spec(
            "driver=qcow2,file.filename=t.qcow2,encrypt.key-secret=sec1,backing.driver=qcow2,\
             backing.file.filename=b.qcow2,backing.encrypt.key-secret=sec0",
            true,
        );
        assert_eq!(
            s.key_secrets,
            [Some("sec1".to_string()), Some("sec0".to_string())]
        );
        let s = spec(
            "file.filename=t.qcow2,backing.backing.encrypt.key-secret=k",
            true,
        );
        assert_eq!(s.key_secrets, [None, None, Some("k".to_string())]);
        assert!(resolve("file.filename=t,backing.cache.direct=on", None, true).is_err());
    }

    #[test]
    fn json_names() {
        let s = spec(
            r#"json:{"driver":"qcow2","file.filename":"t.qcow2"}"#,
            false,
        );
        assert_eq!(
            (s.filename.as_str(), s.format.as_deref()),
            ("t.qcow2", Some("qcow2"))
        );
        let s = spec(
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"t.raw"}}"#,
            false,
        );
        assert_eq!(
            (s.filename.as_str(), s.format.as_deref()),
            ("t.raw", Some("raw"))
        );
        let s = spec(
            r#"json:{ 'driver': 'file', 'filename': 'it\'s "q"' }"#,
            false,
        );
        assert_eq!((s.filename.as_str(), s.format), ("it's \"q\"", None));
        assert!(resolve("json:{\"driver\":\"qcow2\"}", None, false).is_err());
        assert!(resolve("json:[1]", None, false).is_err());
        assert!(resolve(
            r#"json:{"driver":"qcow2","file.filename":"t","x":1}"#,
            None,
            false
        )
        .unwrap_err()
        .to_string()
        .contains("does not support the option 'x'"));
    }

    #[test]
    fn raw_windows() {
        let s = resolve_layered(
            r#"json:{"driver":"qcow2","file":{"driver":"raw","offset":512,"size":1024,
               "file":{"driver":"file","filename":"c.bin"}}}"#,
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            (s.filename.as_str(), s.format.as_deref(), s.window),
            (
                "c.bin",
                Some("qcow2"),
                Some(Window {
                    offset: 512,
                    size: Some(1024)
                })
            )
        );
        let s = resolve_layered("driver=raw,file.filename=d.img,offset=4096", None, true).unwrap();
        assert_eq!(
            s.window,
            Some(Window {
                offset: 4096,
                size: None
            })
        );
        // Commands that do not open the file under a window refuse one.
        assert!(resolve("driver=raw,file.filename=d.img,size=512", None, true).is_err());
        assert!(resolve_layered("driver=raw,file.filename=d,size=-1", None, true).is_err());
        assert!(
            resolve_layered("driver=qcow2,file.filename=d,size=512", None, true).is_err(),
            "a qcow2 node has no size option"
        );
        assert!(resolve_layered(
            "driver=qcow2,file.driver=raw,file.file.driver=nbd,file.file.filename=d",
            None,
            true
        )
        .is_err());
    }

    #[test]
    fn json_backing_targets() {
        let t = backing_target(
            r#"json:{"driver":"qcow2","file":{"driver":"raw","size":512,"file":{"driver":"file","filename":"rel/b.qcow2"}}}"#,
        )
        .unwrap();
        // As it reads: not relative to any image's folder.
        assert_eq!(t.path, std::path::PathBuf::from("rel/b.qcow2"));
        assert_eq!(t.format, Some(qcow::fs::Format::Qcow2));
        assert_eq!(t.window.and_then(|w| w.size), Some(512));
        assert!(backing_target(r#"json:{"driver":"null-co"}"#).is_err());
        assert!(backing_target("json:{").is_err());
    }

    #[test]
    fn option_strings() {
        let s = spec(
            "driver=qcow2,file.driver=file,file.filename=a,,b.qcow2,cache.direct=on",
            true,
        );
        assert_eq!(
            (s.filename.as_str(), s.format.as_deref()),
            ("a,b.qcow2", Some("qcow2"))
        );
        assert!(resolve("driver=qcow2,file.driver=nbd,file.filename=x", None, true).is_err());
        assert!(resolve("driver=qcow2,bogus", None, true).is_err());
    }
}
