//! `--object secret,id=ID,data=...|file=...[,format=raw|base64]`: the
//! secrets qemu-img commands take from the command line, looked up by id
//! from `encrypt.key-secret=ID` and `key-secret=ID`. The objects are taken
//! out of the arguments before clap sees them ([`take_objects`]) and kept
//! for the life of the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;

/// Longest secret accepted (a passphrase or key file).
pub const MAX_SECRET_LEN: u64 = 64 * 1024;

static SECRETS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

/// Parses one `--object` value into its id and secret bytes.
pub fn parse_object(text: &str) -> Result<(String, Vec<u8>)> {
    let mut parts = split_commas(text).into_iter();
    let kind = parts.next().unwrap_or_default();
    let kind = kind.strip_prefix("qom-type=").unwrap_or(&kind).to_string();
    if kind != "secret" {
        bail!("invalid object type: {kind}");
    }
    let mut props = BTreeMap::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("Invalid parameter '{p}'"))?;
        props.insert(k.to_string(), v.to_string());
    }
    let id = props
        .remove("id")
        .ok_or_else(|| anyhow!("Parameter 'id' is missing"))?;
    let raw = match (props.remove("data"), props.remove("file")) {
        (Some(_), Some(_)) => bail!("'data' and 'file' are mutually exclusive"),
        (None, None) => bail!("Either 'data' or 'file' must be provided"),
        (Some(d), None) => d.into_bytes(),
        (None, Some(path)) => {
            let len = std::fs::metadata(&path)
                .with_context(|| format!("Unable to read {path}"))?
                .len();
            if len > MAX_SECRET_LEN {
                bail!("Unable to read {path}: secret larger than {MAX_SECRET_LEN} bytes");
            }
            std::fs::read(&path).with_context(|| format!("Unable to read {path}"))?
        }
    };
    let format = props.remove("format").unwrap_or_else(|| "raw".into());
    if let Some(k) = props.keys().next() {
        bail!("Property 'secret.{k}' not found");
    }
    let value = match format.as_str() {
        "raw" => raw,
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(&raw)
            .map_err(|e| anyhow!("Unable to decode base64 secret data: {e}"))?,
        other => bail!("Parameter 'format' does not accept value '{other}'"),
    };
    Ok((id, value))
}

/// QEMU's option-string split: commas separate, a doubled comma is one.
fn split_commas(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                out.last_mut().expect("never empty").push(',');
            } else {
                out.push(String::new());
            }
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

/// Takes every `--object X` and `--object=X` out of `args`, records the
/// secrets they define and returns the other arguments.
pub fn take_objects(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    let mut rest = Vec::with_capacity(args.len());
    let mut secrets = BTreeMap::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let text = a.to_str().map(str::to_owned);
        let value = match text.as_deref() {
            Some("--object") => match it.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => {
                    rest.push(a);
                    continue;
                }
            },
            Some(t) if t.starts_with("--object=") => t["--object=".len()..].to_string(),
            _ => {
                rest.push(a);
                continue;
            }
        };
        let (id, secret) = parse_object(&value)?;
        if secrets.insert(id.clone(), secret).is_some() {
            bail!("attempt to add duplicate property '{id}' to object (type 'container')");
        }
    }
    SECRETS
        .lock()
        .expect("secret store lock poisoned")
        .extend(secrets);
    Ok(rest)
}

/// The secret `id` defined by `--object`, with QEMU's message if absent.
pub fn lookup(id: &str) -> Result<Vec<u8>> {
    SECRETS
        .lock()
        .expect("secret store lock poisoned")
        .get(id)
        .cloned()
        .ok_or_else(|| anyhow!("No secret with id '{id}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_base64_and_doubled_commas() {
        assert_eq!(
            parse_object("secret,id=sec0,data=a,,b").unwrap(),
            ("sec0".into(), b"a,b".to_vec())
        );
        assert_eq!(
            parse_object("secret,id=s,data=MTIzNDU2,format=base64")
                .unwrap()
                .1,
            b"123456"
        );
    }

    #[test]
    fn file_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2").unwrap();
        let (_, v) = parse_object(&format!("secret,id=x,file={}", p.display())).unwrap();
        assert_eq!(v, b"hunter2");
    }

    #[test]
    fn bad_objects_get_qemus_messages() {
        let e = |t: &str| parse_object(t).unwrap_err().to_string();
        assert_eq!(e("secret,id=a"), "Either 'data' or 'file' must be provided");
        assert_eq!(
            e("secret,id=a,data=x,file=y"),
            "'data' and 'file' are mutually exclusive"
        );
        assert_eq!(e("iothread,id=a"), "invalid object type: iothread");
        assert!(e("secret,id=a,data=@@,format=base64").contains("base64"));
        assert!(e("secret,data=x").contains("'id'"));
    }

    #[test]
    fn objects_leave_the_other_arguments() {
        let args = [
            "img",
            "info",
            "--object",
            "secret,id=k,data=v",
            "--object=secret,id=j,data=w",
            "x",
        ]
        .iter()
        .map(std::ffi::OsString::from)
        .collect();
        let rest = take_objects(args).unwrap();
        assert_eq!(rest, ["img", "info", "x"]);
    }
}
