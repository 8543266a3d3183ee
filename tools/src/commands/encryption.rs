//! Encryption on the command line: the `encrypt.*` create options of
//! qcow2 and the options of the `luks` format turned into the library's
//! [`NewEncryption`], and the key secrets of images opened for I/O
//! (`encrypt.key-secret=ID` of `--image-opts`), with qemu-img's messages.

use anyhow::{anyhow, bail, Result};
use qcow::create::NewEncryption;
use qcow::crypto::{CipherAlg, CipherMode, CipherSpec, HashAlg, IvGenAlg, LuksOptions};

use crate::opts::secret;
use crate::opts::ParsedOptions;

/// Names QEMU's QAPI enumerations know that img does not implement.
/// (LUKS maps no name to DES or 3DES, and the QEMU held to here was built
/// without SM4 and SM3: it refuses them in the same words.)
const QEMU_ONLY_CIPHERS: &[&str] = &["des", "3des", "sm4"];
const QEMU_ONLY_MODES: &[&str] = &[];
const QEMU_ONLY_HASHES: &[&str] = &["sm3"];

/// Parses an enumeration value. A name QEMU knows but img does not
/// implement is refused later (QEMU refuses it after the key secret),
/// so it is kept in `deferred` and the default stays.
fn enum_value<T>(
    parameter: &str,
    value: &str,
    parse: fn(&str) -> qcow::Result<T>,
    qemu_only: &[&str],
    deferred: &mut Option<String>,
) -> Result<Option<T>> {
    match parse(value) {
        Ok(v) => Ok(Some(v)),
        Err(_) if qemu_only.contains(&value) => {
            deferred.get_or_insert_with(|| format!("Algorithm '{value}' not supported"));
            Ok(None)
        }
        Err(_) => bail!("Parameter '{parameter}' does not accept value '{value}'"),
    }
}

/// The LUKS options under `prefix` (`encrypt.` for qcow2, empty for the
/// luks format) and the passphrase of their key secret.
pub fn luks_options(parsed: &ParsedOptions, prefix: &str) -> Result<(LuksOptions, Vec<u8>)> {
    let get = |name: &str| parsed.get(&format!("{prefix}{name}"));
    let text = |name: &str| get(name).map(|v| v.raw.clone());
    let mut opts = LuksOptions::default();
    let mut deferred = None;
    let d = &mut deferred;
    if let Some(v) = text("cipher-alg") {
        if let Some(a) = enum_value("cipher-alg", &v, CipherAlg::parse, QEMU_ONLY_CIPHERS, d)? {
            opts.spec.alg = a;
        }
    }
    if let Some(v) = text("cipher-mode") {
        if let Some(m) = enum_value("cipher-mode", &v, CipherMode::parse, QEMU_ONLY_MODES, d)? {
            opts.spec.mode = m;
        }
    }
    if let Some(v) = text("ivgen-alg") {
        if let Some(i) = enum_value("ivgen-alg", &v, IvGenAlg::parse, &[], d)? {
            opts.spec.ivgen = i;
        }
    }
    if let Some(v) = text("ivgen-hash-alg") {
        opts.spec.ivgen_hash =
            enum_value("ivgen-hash-alg", &v, HashAlg::parse, QEMU_ONLY_HASHES, d)?;
    }
    if let Some(v) = text("hash-alg") {
        if let Some(h) = enum_value("hash-alg", &v, HashAlg::parse, QEMU_ONLY_HASHES, d)? {
            opts.hash = h;
        }
    }
    if let Some(v) = get("iter-time") {
        opts.iter_time_ms = v.number.unwrap_or_default();
    }
    let password = key_secret(text("key-secret"), prefix)?;
    if let Some(e) = deferred {
        bail!("{e}");
    }
    if get("detached-header").and_then(|v| v.boolean) == Some(true) {
        bail!("img does not create detached LUKS headers");
    }
    if opts.spec.ivgen == IvGenAlg::Essiv && opts.spec.ivgen_hash.is_none() {
        opts.spec.ivgen_hash = Some(HashAlg::Sha256);
    }
    let spec: CipherSpec = opts.spec;
    spec.validate().map_err(|e| match e {
        qcow::Error::CryptoUnsupported { value, .. } => anyhow!("{value}"),
        e => anyhow!("{e}"),
    })?;
    Ok((opts, password))
}

/// The header area a LUKS volume with these options (under `prefix`)
/// takes, for `measure`; no secret is needed.
pub fn luks_header_len(parsed: &ParsedOptions, prefix: &str) -> Result<u64> {
    let text = |name: &str| {
        parsed
            .get(&format!("{prefix}{name}"))
            .map(|v| v.raw.clone())
    };
    let mut deferred = None;
    let mut spec = LuksOptions::default().spec;
    if let Some(v) = text("cipher-alg") {
        if let Some(a) = enum_value(
            "cipher-alg",
            &v,
            CipherAlg::parse,
            QEMU_ONLY_CIPHERS,
            &mut deferred,
        )? {
            spec.alg = a;
        }
    }
    if let Some(v) = text("cipher-mode") {
        if let Some(m) = enum_value(
            "cipher-mode",
            &v,
            CipherMode::parse,
            QEMU_ONLY_MODES,
            &mut deferred,
        )? {
            spec.mode = m;
        }
    }
    if let Some(e) = deferred {
        bail!("{e}");
    }
    Ok(qcow::crypto::luks::area_len_for(spec.key_len()))
}

/// The secret `id` names, or qemu-img's message when no id was given.
pub fn key_secret(id: Option<String>, prefix: &str) -> Result<Vec<u8>> {
    let id = id.ok_or_else(|| anyhow!("Parameter '{prefix}key-secret' is required for cipher"))?;
    secret::lookup(&id)
}

/// The encryption a qcow2 `create` asks for (`encryption=on`,
/// `encrypt.format=aes|luks` and the `encrypt.*` options), checked as
/// QEMU's qcow2 driver checks them.
pub fn qcow2_encryption(parsed: &ParsedOptions) -> Result<Option<NewEncryption>> {
    let legacy = parsed.get("encryption").and_then(|v| v.boolean);
    let format = parsed.get("encrypt.format").map(|v| v.raw.clone());
    let format = match (format, legacy) {
        (Some(_), Some(_)) => {
            bail!("'encrypt.format' and its alias 'encryption' can't be used at the same time")
        }
        (Some(f), None) => Some(f),
        (None, Some(true)) => Some("aes".to_string()),
        (None, _) => None,
    };
    let luks_only = [
        "cipher-alg",
        "cipher-mode",
        "ivgen-alg",
        "ivgen-hash-alg",
        "hash-alg",
        "iter-time",
    ];
    match format.as_deref() {
        None => {
            if parsed.get("encrypt.key-secret").is_some()
                || luks_only
                    .iter()
                    .any(|n| parsed.get(&format!("encrypt.{n}")).is_some())
            {
                bail!("No encryption format given, but encrypt.* options were");
            }
            Ok(None)
        }
        Some("aes") => {
            if let Some(n) = luks_only
                .iter()
                .find(|n| parsed.get(&format!("encrypt.{n}")).is_some())
            {
                bail!("Parameter 'encrypt.{n}' is unexpected");
            }
            key_secret(
                parsed.get("encrypt.key-secret").map(|v| v.raw.clone()),
                "encrypt.",
            )?;
            Ok(Some(NewEncryption::Aes))
        }
        Some("luks") => {
            let (options, password) = luks_options(parsed, "encrypt.")?;
            Ok(Some(NewEncryption::Luks { options, password }))
        }
        Some(other) => bail!("Parameter 'format' does not accept value '{other}'"),
    }
}

/// The `encrypt.key-secret` (or `key-secret`) an `--image-opts` string or
/// `json:` name gives for the image itself, looked up.
pub fn image_key(spec_secret: Option<&str>) -> Result<Option<Vec<u8>>> {
    match spec_secret {
        Some(id) => secret::lookup(id).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::ImageFormat;

    fn parsed(list: &str) -> ParsedOptions {
        ParsedOptions::parse_str(ImageFormat::Qcow2, list).unwrap()
    }

    #[test]
    fn formats_and_their_conflicts() {
        assert_eq!(qcow2_encryption(&parsed("size=1M")).unwrap(), None);
        let e = qcow2_encryption(&parsed("encryption=on,encrypt.format=luks"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("can't be used at the same time"), "{e}");
        let e = qcow2_encryption(&parsed("encrypt.format=foo"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Parameter 'format' does not accept value 'foo'");
        let e = qcow2_encryption(&parsed("encrypt.format=luks"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Parameter 'encrypt.key-secret' is required for cipher");
        let e = qcow2_encryption(&parsed(
            "encrypt.format=aes,encrypt.key-secret=x,encrypt.cipher-alg=aes-128",
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(e, "Parameter 'encrypt.cipher-alg' is unexpected");
    }

    #[test]
    fn algorithm_names_get_qemus_messages() {
        let p = parsed("encrypt.format=luks,encrypt.cipher-alg=foo");
        assert_eq!(
            luks_options(&p, "encrypt.").unwrap_err().to_string(),
            "Parameter 'cipher-alg' does not accept value 'foo'"
        );
        crate::opts::secret::take_objects(vec!["--object".into(), "secret,id=k,data=x".into()])
            .unwrap();
        let p = parsed("encrypt.format=luks,encrypt.key-secret=k,encrypt.cipher-alg=sm4");
        assert_eq!(
            luks_options(&p, "encrypt.").unwrap_err().to_string(),
            "Algorithm 'sm4' not supported"
        );
        let p = parsed("encrypt.format=luks,encrypt.key-secret=k,encrypt.cipher-alg=cast5-128");
        assert_eq!(
            luks_options(&p, "encrypt.").unwrap_err().to_string(),
            "Unsupported cipher mode xts"
        );
        let p = parsed(
            "encrypt.format=luks,encrypt.key-secret=k,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha1",
        );
        assert_eq!(
            luks_options(&p, "encrypt.").unwrap_err().to_string(),
            "No AES cipher with key size 20 available"
        );
    }
}
