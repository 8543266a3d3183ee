//! `<interface>` elements of a domain, read from the text the domain
//! keeps for them (the definition prints them back as given): the type,
//! `<mac address>`, `<source bridge|network|dev>`, `<target dev
//! managed>`, `<model type>`. What a VM can run (`ethernet` over a tap
//! the user made, `bridge` over a tap `vm` makes; virtio only) is checked
//! when it starts; the commands list any type, as virsh does.

use roxmltree::{Document, Node, ParsingOptions};

use super::units::truncate;
use super::{DomainDef, XmlError};

/// The most interfaces a domain may have (the VMM's virtio-mmio slots).
pub const MAX_INTERFACES: usize = 18;
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_DEV_NAME: usize = 15;

/// One `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDef {
    /// `type` (`ethernet`, `bridge`, `network`, ...).
    pub kind: String,
    /// `<mac address>`, lower case.
    pub mac: Option<String>,
    /// `<source bridge=...>` (or `network=`, `dev=` for other types).
    pub source: Option<String>,
    /// `<target dev=...>`.
    pub target_dev: Option<String>,
    /// `<target managed=...>` (`no`: the tap exists, made by the user).
    pub managed: Option<bool>,
    /// `<model type=...>`.
    pub model: Option<String>,
}

fn bad(element: &str, value: &str, reason: &str) -> XmlError {
    XmlError::BadValue {
        element: element.to_string(),
        value: truncate(value),
        reason: reason.to_string(),
    }
}

/// Whether `text` is a unicast MAC address `aa:bb:cc:dd:ee:ff`.
fn valid_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

/// Whether `name` can name a network interface.
fn valid_dev(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DEV_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', ':'])
        && !name.chars().any(|c| c.is_control())
}

/// Reads one `<interface>` element's text.
pub fn parse_interface(text: &str) -> Result<InterfaceDef, XmlError> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: 1_000,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options)
        .map_err(|e| XmlError::Malformed(format!("<interface>: {}", truncate(&e.to_string()))))?;
    let root = doc.root_element();
    let kind = root
        .attribute("type")
        .ok_or(XmlError::Missing("interface type"))?
        .to_string();
    let child = |name: &str| -> Result<Option<Node>, XmlError> {
        let mut found = root
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(XmlError::Duplicate(format!("interface/{name}")));
        }
        Ok(first)
    };
    let mac = match child("mac")? {
        None => None,
        Some(node) => {
            let address = node
                .attribute("address")
                .ok_or(XmlError::Missing("interface/mac address"))?;
            if !valid_mac(address) {
                return Err(bad(
                    "interface/mac/@address",
                    address,
                    "expected a unicast address like 52:54:00:12:34:56",
                ));
            }
            Some(address.to_ascii_lowercase())
        }
    };
    let source = child("source")?.and_then(|node| {
        ["bridge", "network", "dev"]
            .iter()
            .find_map(|a| node.attribute(*a))
            .map(str::to_string)
    });
    let (target_dev, managed) = match child("target")? {
        None => (None, None),
        Some(node) => {
            let dev = node.attribute("dev").map(str::to_string);
            if let Some(dev) = &dev {
                if !valid_dev(dev) {
                    return Err(bad(
                        "interface/target/@dev",
                        dev,
                        "an interface name of 1 to 15 characters",
                    ));
                }
            }
            let managed = match node.attribute("managed") {
                None => None,
                Some("yes") => Some(true),
                Some("no") => Some(false),
                Some(other) => {
                    return Err(bad(
                        "interface/target/@managed",
                        other,
                        "expected yes or no",
                    ))
                }
            };
            (dev, managed)
        }
    };
    if kind == "bridge" {
        match &source {
            Some(bridge) if valid_dev(bridge) => {}
            Some(bridge) => {
                return Err(bad(
                    "interface/source/@bridge",
                    bridge,
                    "a bridge name of 1 to 15 characters",
                ))
            }
            None => return Err(XmlError::Missing("interface/source bridge")),
        }
    }
    let model = child("model")?.and_then(|n| n.attribute("type").map(str::to_string));
    Ok(InterfaceDef {
        kind,
        mac,
        source,
        target_dev,
        managed,
        model,
    })
}

/// Every `<interface>` of `def`, in document order.
pub fn interfaces(def: &DomainDef) -> Result<Vec<InterfaceDef>, XmlError> {
    let texts: Vec<&str> = def
        .other_devices()
        .filter(|(element, _)| *element == "interface")
        .map(|(_, text)| text)
        .collect();
    if texts.len() > MAX_INTERFACES {
        return Err(bad(
            "devices/interface",
            &texts.len().to_string(),
            &format!("at most {MAX_INTERFACES} interfaces"),
        ));
    }
    texts.into_iter().map(parse_interface).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_and_bridge_interfaces_are_read() {
        let eth = parse_interface(
            "<interface type='ethernet'><mac address='52:54:00:AB:cd:ef'/>\
             <target dev='tap0' managed='no'/><model type='virtio'/></interface>",
        )
        .unwrap();
        assert_eq!(eth.kind, "ethernet");
        assert_eq!(eth.mac.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(eth.target_dev.as_deref(), Some("tap0"));
        assert_eq!(eth.managed, Some(false));
        assert_eq!(eth.model.as_deref(), Some("virtio"));
        let br =
            parse_interface("<interface type='bridge'><source bridge='br0'/></interface>").unwrap();
        assert_eq!(
            (br.kind.as_str(), br.source.as_deref()),
            ("bridge", Some("br0"))
        );
        assert!(br.mac.is_none() && br.target_dev.is_none() && br.model.is_none());
        let net = parse_interface(
            "<interface type='network'><source network='default'/><target dev='testnet0'/></interface>",
        )
        .unwrap();
        assert_eq!(net.source.as_deref(), Some("default"));
    }

    #[test]
    fn bad_interfaces_are_refused_in_one_line() {
        for bad in [
            "<interface/>",
            "<interface type='ethernet'><mac address='01:00:00:00:00:00'/></interface>",
            "<interface type='ethernet'><mac address='52:54:00:00:00'/></interface>",
            "<interface type='ethernet'><mac/></interface>",
            "<interface type='ethernet'><target dev='a-very-long-tap-name'/></interface>",
            "<interface type='ethernet'><target dev='a/b'/></interface>",
            "<interface type='ethernet'><target dev='t' managed='maybe'/></interface>",
            "<interface type='ethernet'><mac address='52:54:00:00:00:01'/><mac address='52:54:00:00:00:02'/></interface>",
            "<interface type='bridge'/>",
            "<interface type='bridge'><source bridge=''/></interface>",
            "<interface type='ethernet'>",
        ] {
            let err = parse_interface(bad).expect_err(bad).to_string();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }
}
