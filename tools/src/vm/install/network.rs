//! virt-install's `--network` for this stack: `bridge=BR` (or the old
//! `bridge:BR`) with `mac=` and `model=virtio`, which becomes the
//! `<interface type='bridge'>` that `vm start` runs (a tap `vm` makes and
//! puts on the bridge), and `none`. Libvirt's virtual networks
//! (`network=NAME`, `default`) and the other kinds are refused with one
//! line naming what is supported.

use std::io::Read;

use super::error::InstallError;

/// One `--network bridge=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOption {
    /// The host bridge the guest's tap joins.
    pub bridge: String,
    /// `mac=`, lower case; None to make one up (52:54:00:xx:xx:xx, as
    /// virt-install does).
    pub mac: Option<String>,
}

/// Longest interface name (IFNAMSIZ less the NUL).
const MAX_BRIDGE_NAME: usize = 15;

fn err(reason: impl Into<String>) -> InstallError {
    InstallError::Option {
        option: "--network",
        reason: reason.into(),
    }
}

const SUPPORTED: &str = "only bridge=BRIDGE (with mac=, model=virtio) or none";

fn check_bridge(name: &str) -> Result<String, InstallError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_BRIDGE_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', ':', ','])
        && !name.chars().any(|c| c.is_control());
    if !valid {
        return Err(err(format!(
            "bridge '{}' is not an interface name (1 to {MAX_BRIDGE_NAME} bytes, no '/', ':' or spaces)",
            name.escape_debug()
        )));
    }
    Ok(name.to_string())
}

fn check_mac(text: &str) -> Result<String, InstallError> {
    let lower = text.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0);
    if !valid {
        return Err(err(format!(
            "mac '{}' is not a unicast address like 52:54:00:12:34:56",
            text.escape_debug()
        )));
    }
    Ok(lower)
}

/// Parses one `--network` value: Some for a bridge, None for `none`.
pub fn parse(value: &str) -> Result<Option<NetworkOption>, InstallError> {
    if value == "none" {
        return Ok(None);
    }
    let mut bridge = None;
    let mut mac = None;
    for (index, part) in value.split(',').enumerate() {
        let (key, v) = match part.split_once('=') {
            Some((k, v)) => (k, v),
            // virt-install's first bare value: `bridge:BR`,
            // `network:NAME`, `default`, `none`, `user`.
            None if index == 0 => match part.split_once(':') {
                Some(("bridge", name)) => ("bridge", name),
                _ => {
                    return Err(err(format!(
                        "'{}' is not supported: {SUPPORTED}",
                        part.escape_debug()
                    )))
                }
            },
            None => return Err(err(format!("'{}' needs a value", part.escape_debug()))),
        };
        match key {
            "bridge" | "source" => bridge = Some(check_bridge(v)?),
            "mac" | "mac.address" => mac = Some(check_mac(v)?),
            "model" | "model.type" if v == "virtio" => {}
            "model" | "model.type" => {
                return Err(err(format!(
                    "model '{}' is not supported: only virtio",
                    v.escape_debug()
                )))
            }
            "type" if v == "bridge" => {}
            "network" | "type" => {
                return Err(err(format!(
                    "'{key}={}' is not supported: {SUPPORTED} (this stack has no libvirt virtual networks)",
                    v.escape_debug()
                )))
            }
            other => {
                return Err(err(format!(
                    "unknown sub-option '{}'",
                    other.escape_debug()
                )))
            }
        }
    }
    let bridge = bridge.ok_or_else(|| err(format!("no bridge given: {SUPPORTED}")))?;
    Ok(Some(NetworkOption { bridge, mac }))
}

/// A MAC address in QEMU's and libvirt's locally administered range
/// 52:54:00, its last three bytes from /dev/urandom.
pub fn random_mac() -> Result<String, InstallError> {
    let mut bytes = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| InstallError::Io {
            path: "/dev/urandom".to_string(),
            reason: e.to_string(),
        })?;
    Ok(format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_and_none() {
        assert_eq!(parse("none").unwrap(), None);
        let want = NetworkOption {
            bridge: "br0".to_string(),
            mac: None,
        };
        assert_eq!(parse("bridge=br0").unwrap(), Some(want.clone()));
        assert_eq!(
            parse("bridge:br0,model=virtio").unwrap(),
            Some(want.clone())
        );
        assert_eq!(parse("type=bridge,source=br0").unwrap(), Some(want));
        let with_mac = parse("bridge=br1,mac=52:54:00:AA:bb:01").unwrap().unwrap();
        assert_eq!(with_mac.mac.as_deref(), Some("52:54:00:aa:bb:01"));
    }

    #[test]
    fn other_kinds_are_refused_in_one_line() {
        for (value, expected) in [
            (
                "network=default",
                "'network=default' is not supported: only bridge=",
            ),
            ("default", "'default' is not supported: only bridge="),
            ("network:default", "'network:default' is not supported"),
            ("user", "'user' is not supported"),
            ("type=direct,source=eth0", "'type=direct' is not supported"),
            ("bridge=br0,model=e1000", "model 'e1000' is not supported"),
            ("bridge=br0,mac=01:00:00:00:00:00", "not a unicast address"),
            ("bridge=a/b", "is not an interface name"),
            ("bridge=averyveryverylongname", "is not an interface name"),
            ("mac=52:54:00:00:00:01", "no bridge given"),
            ("bridge=br0,filterref=x", "unknown sub-option 'filterref'"),
        ] {
            let text = parse(value).unwrap_err().to_string();
            assert!(text.starts_with("--network: "), "{value}: {text}");
            assert!(text.contains(expected), "{value}: {text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn made_up_macs_are_local_unicast_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        assert!(a.starts_with("52:54:00:") && check_mac(&a).is_ok(), "{a}");
        // Two draws of 24 random bits: equal once in 16 million.
        assert_ne!(a, b);
    }
}
