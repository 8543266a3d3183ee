//! libvirt's `<cputune>` (`<vcpupin vcpu= cpuset=>`, `<emulatorpin
//! cpuset=>`, `<shares>`, `<period>`, `<quota>`) and `<memtune>`
//! (`<hard_limit>`, `<soft_limit>`, `<swap_hard_limit>`). The XML reader
//! keeps both elements as given; this module reads them into validated
//! values, with libvirt's ranges, and writes them back in libvirt's
//! layout when a command changes them.

use super::cpuset::CpuSet;
use crate::vm::error::VmError;
use crate::vm::xml::units::parse_memory_kib;
use crate::vm::xml::{DomainDef, Item};

/// libvirt's `<period>` range in µs.
pub const PERIOD_RANGE: (u64, u64) = (1000, 1_000_000);
/// libvirt's `<quota>` range in µs (or -1: no limit).
pub const QUOTA_RANGE: (i64, i64) = (1000, 17_592_186_044_415);
/// libvirt's `<shares>` range (cgroup v1's cpu.shares).
pub const SHARES_RANGE: (u64, u64) = (2, 262_144);

/// `<cputune>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuTune {
    /// `<vcpupin>`s: vCPU and its host CPUs, by vCPU.
    pub vcpupins: Vec<(u32, CpuSet)>,
    /// `<emulatorpin>`.
    pub emulatorpin: Option<CpuSet>,
    /// `<shares>`.
    pub shares: Option<u64>,
    /// `<period>` in µs.
    pub period: Option<u64>,
    /// `<quota>` in µs per period, for each vCPU (libvirt's meaning).
    pub quota: Option<i64>,
}

/// `<memtune>`, in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemTune {
    /// `<hard_limit>`.
    pub hard_limit_kib: Option<u64>,
    /// `<soft_limit>`.
    pub soft_limit_kib: Option<u64>,
    /// `<swap_hard_limit>`.
    pub swap_hard_limit_kib: Option<u64>,
}

fn bad(element: &str, value: &str, reason: impl Into<String>) -> VmError {
    VmError::Refused(format!(
        "XML error: invalid value '{}' in '{element}': {}",
        value.chars().take(64).collect::<String>(),
        reason.into()
    ))
}

/// The kept text of `<element>` at the top of the domain, if any.
fn kept<'a>(def: &'a DomainDef, element: &str) -> Option<(usize, &'a str)> {
    def.items
        .iter()
        .enumerate()
        .find_map(|(i, item)| match item {
            Item::Other(text) => {
                let open = format!("<{element}");
                let rest = text.trim_start().strip_prefix(&open)?;
                rest.starts_with(['>', ' ', '/', '\t', '\n', '\r'])
                    .then_some((i, text.as_str()))
            }
            _ => None,
        })
}

fn number<T: std::str::FromStr>(element: &str, text: &str) -> Result<T, VmError> {
    text.trim()
        .parse()
        .map_err(|_| bad(element, text, "not a number"))
}

/// Reads and validates `<cputune>` against the domain's vCPUs.
pub fn cputune(def: &DomainDef) -> Result<CpuTune, VmError> {
    let mut tune = CpuTune::default();
    let Some((_, text)) = kept(def, "cputune") else {
        return Ok(tune);
    };
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| VmError::Refused(format!("XML error: <cputune>: {e}")))?;
    for child in doc.root_element().children().filter(|n| n.is_element()) {
        let value = child.text().unwrap_or("");
        match child.tag_name().name() {
            "vcpupin" => {
                let vcpu_text = child.attribute("vcpu").unwrap_or("");
                let vcpu: u32 = number("cputune/vcpupin/@vcpu", vcpu_text)?;
                if vcpu >= def.vcpus {
                    return Err(bad(
                        "cputune/vcpupin/@vcpu",
                        vcpu_text,
                        format!("the domain has {} vCPUs", def.vcpus),
                    ));
                }
                if tune.vcpupins.iter().any(|(v, _)| *v == vcpu) {
                    return Err(bad("cputune/vcpupin/@vcpu", vcpu_text, "duplicate vcpupin"));
                }
                let set = child.attribute("cpuset").unwrap_or("");
                let set = CpuSet::parse(set).map_err(|r| bad("cputune/vcpupin/@cpuset", set, r))?;
                tune.vcpupins.push((vcpu, set));
            }
            "emulatorpin" => {
                let set = child.attribute("cpuset").unwrap_or("");
                tune.emulatorpin = Some(
                    CpuSet::parse(set).map_err(|r| bad("cputune/emulatorpin/@cpuset", set, r))?,
                );
            }
            "shares" => {
                let shares: u64 = number("cputune/shares", value)?;
                if !(SHARES_RANGE.0..=SHARES_RANGE.1).contains(&shares) {
                    return Err(bad(
                        "cputune/shares",
                        value,
                        format!("must be {} to {}", SHARES_RANGE.0, SHARES_RANGE.1),
                    ));
                }
                tune.shares = Some(shares);
            }
            "period" => {
                let period: u64 = number("cputune/period", value)?;
                if !(PERIOD_RANGE.0..=PERIOD_RANGE.1).contains(&period) {
                    return Err(bad(
                        "cputune/period",
                        value,
                        format!("must be {} to {}", PERIOD_RANGE.0, PERIOD_RANGE.1),
                    ));
                }
                tune.period = Some(period);
            }
            "quota" => {
                let quota: i64 = number("cputune/quota", value)?;
                if quota != -1 && !(QUOTA_RANGE.0..=QUOTA_RANGE.1).contains(&quota) {
                    return Err(bad(
                        "cputune/quota",
                        value,
                        format!("must be -1 or {} to {}", QUOTA_RANGE.0, QUOTA_RANGE.1),
                    ));
                }
                tune.quota = Some(quota);
            }
            // Others (emulator_period, iothreadpin, ...) are kept, not applied.
            _ => {}
        }
    }
    tune.vcpupins.sort_by_key(|(v, _)| *v);
    Ok(tune)
}

/// Reads and validates `<memtune>`.
pub fn memtune(def: &DomainDef) -> Result<MemTune, VmError> {
    let mut tune = MemTune::default();
    let Some((_, text)) = kept(def, "memtune") else {
        return Ok(tune);
    };
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| VmError::Refused(format!("XML error: <memtune>: {e}")))?;
    for child in doc.root_element().children().filter(|n| n.is_element()) {
        let name = child.tag_name().name();
        let slot = match name {
            "hard_limit" => &mut tune.hard_limit_kib,
            "soft_limit" => &mut tune.soft_limit_kib,
            "swap_hard_limit" => &mut tune.swap_hard_limit_kib,
            _ => continue,
        };
        let kib = parse_memory_kib(
            &format!("memtune/{name}"),
            child.text().unwrap_or(""),
            child.attribute("unit"),
        )?;
        *slot = Some(kib);
    }
    if let (Some(hard), Some(swap)) = (tune.hard_limit_kib, tune.swap_hard_limit_kib) {
        if swap < hard {
            return Err(VmError::Refused(
                "XML error: memory hard_limit tunable value must be lower than or equal to swap_hard_limit".to_string(),
            ));
        }
    }
    Ok(tune)
}

/// Puts `text` in place of `<element>` (after `<vcpu>`, or after
/// `<currentMemory>` for memtune, when new); empty text removes it.
fn replace(def: &mut DomainDef, element: &str, text: String) {
    let after = if element == "memtune" {
        Item::CurrentMemory
    } else {
        Item::Vcpu
    };
    match kept(def, element).map(|(i, _)| i) {
        Some(i) if text.is_empty() => {
            def.items.remove(i);
        }
        Some(i) => def.items[i] = Item::Other(text),
        None if text.is_empty() => {}
        None => {
            let at = def
                .items
                .iter()
                .position(|i| *i == after)
                .map_or(def.items.len(), |i| i + 1);
            def.items.insert(at, Item::Other(text));
        }
    }
}

/// Writes `tune` into the definition as libvirt lays `<cputune>` out.
pub fn set_cputune(def: &mut DomainDef, tune: &CpuTune) {
    let mut lines = Vec::new();
    if let Some(shares) = tune.shares {
        lines.push(format!("<shares>{shares}</shares>"));
    }
    if let Some(period) = tune.period {
        lines.push(format!("<period>{period}</period>"));
    }
    if let Some(quota) = tune.quota {
        lines.push(format!("<quota>{quota}</quota>"));
    }
    for (vcpu, set) in &tune.vcpupins {
        lines.push(format!(
            "<vcpupin vcpu='{vcpu}' cpuset='{}'/>",
            set.format()
        ));
    }
    if let Some(set) = &tune.emulatorpin {
        lines.push(format!("<emulatorpin cpuset='{}'/>", set.format()));
    }
    let text = if lines.is_empty() {
        String::new()
    } else {
        format!("<cputune>\n    {}\n  </cputune>", lines.join("\n    "))
    };
    replace(def, "cputune", text);
}

/// Writes `tune` into the definition as libvirt lays `<memtune>` out.
pub fn set_memtune(def: &mut DomainDef, tune: &MemTune) {
    let mut lines = Vec::new();
    for (name, value) in [
        ("hard_limit", tune.hard_limit_kib),
        ("soft_limit", tune.soft_limit_kib),
        ("swap_hard_limit", tune.swap_hard_limit_kib),
    ] {
        if let Some(kib) = value {
            lines.push(format!("<{name} unit='KiB'>{kib}</{name}>"));
        }
    }
    let text = if lines.is_empty() {
        String::new()
    } else {
        format!("<memtune>\n    {}\n  </memtune>", lines.join("\n    "))
    };
    replace(def, "memtune", text);
}

/// Drops `<vcpupin>`s of vCPUs the domain no longer has (after
/// `setvcpus --maximum`), as libvirt does.
pub fn drop_pins_past(def: &mut DomainDef) -> Result<(), VmError> {
    if kept(def, "cputune").is_none() {
        return Ok(());
    }
    // Read without the vCPU check, then keep the pins still in range.
    let max = def.vcpus;
    def.vcpus = u32::MAX;
    let tune = cputune(def);
    def.vcpus = max;
    let mut tune = tune?;
    let before = tune.vcpupins.len();
    tune.vcpupins.retain(|(v, _)| *v < max);
    if tune.vcpupins.len() != before {
        set_cputune(def, &tune);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::xml::parse_domain;

    fn domain(extra: &str) -> DomainDef {
        let xml = format!(
            "<domain type='kvm'><name>t</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>{extra}<os><type>hvm</type><kernel>/k</kernel></os></domain>"
        );
        parse_domain(xml.as_bytes()).unwrap()
    }

    #[test]
    fn reads_and_writes_back_cputune_and_memtune() {
        let mut def = domain(
            "<cputune><shares>512</shares><period>100000</period><quota>20000</quota>\
             <vcpupin vcpu='1' cpuset='0-1'/><vcpupin vcpu='0' cpuset='1'/><emulatorpin cpuset='0'/></cputune>\
             <memtune><hard_limit unit='MiB'>128</hard_limit></memtune>",
        );
        let tune = cputune(&def).unwrap();
        assert_eq!(tune.shares, Some(512));
        assert_eq!(tune.quota, Some(20000));
        assert_eq!(tune.vcpupins[0], (0, CpuSet::parse("1").unwrap()));
        assert_eq!(memtune(&def).unwrap().hard_limit_kib, Some(131072));
        set_cputune(&mut def, &tune);
        let again = parse_domain(def.to_xml().as_bytes()).unwrap();
        assert_eq!(cputune(&again).unwrap(), tune);
        def.vcpus = 1;
        def.vcpus_current = 1;
        drop_pins_past(&mut def).unwrap();
        assert_eq!(cputune(&def).unwrap().vcpupins.len(), 1);
    }

    #[test]
    fn out_of_range_values_are_refused_in_one_line() {
        for extra in [
            "<cputune><vcpupin vcpu='2' cpuset='0'/></cputune>",
            "<cputune><vcpupin vcpu='0' cpuset='x'/></cputune>",
            "<cputune><period>10</period></cputune>",
            "<cputune><quota>5</quota></cputune>",
            "<cputune><shares>1</shares></cputune>",
        ] {
            let e = cputune(&domain(extra)).unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.contains("invalid value"),
                "{extra}: {e}"
            );
        }
        let e = memtune(&domain("<memtune><hard_limit>x</hard_limit></memtune>")).unwrap_err();
        assert!(!e.to_string().contains('\n'));
    }
}
