//! Network interfaces as the user asks for them, validated: `vmm --net
//! tap=NAME[,mac=MAC][,num_queues=N][,queue_size=N][,id=ID]` or
//! `fd=N` / `fd=[N,M]` (Cloud Hypervisor's syntax), or CH's `NetConfig`
//! from vm.create ([`from_api`]), and back ([`to_api`]).
//!
//! As in CH, `num_queues` counts virtqueues (two per queue pair, default
//! 2) and a missing MAC is a random locally administered one.

use std::fmt;

use crate::error::{Error, Result};

/// Most queue pairs of one interface (blockdev's limit).
pub const MAX_NET_PAIRS: u16 = blockdev::virtio::net::defs::MAX_QUEUE_PAIRS;
/// Largest virtqueue size of a net device.
pub const MAX_NET_QUEUE_SIZE: u16 = blockdev::virtio::net::defs::QUEUE_MAX_SIZE;
/// CH's default virtqueue size.
pub const DEFAULT_NET_QUEUE_SIZE: u16 = 256;
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_TAP_NAME: usize = 15;
/// Longest device id.
const MAX_NET_ID_LEN: usize = crate::config::MAX_ID_LEN;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Parses `52:54:00:12:34:56`: six hex pairs, a unicast address.
    pub fn parse(text: &str) -> Option<MacAddress> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() || bytes[0] & 1 != 0 {
            return None;
        }
        Some(MacAddress(bytes))
    }

    /// A random locally administered unicast address, as CH makes one.
    pub fn random() -> MacAddress {
        let mut bytes = [0u8; 6];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            // No /dev/urandom: the clock's nanoseconds will do.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
        }
        bytes[0] = (bytes[0] & 0xfc) | 0x02;
        MacAddress(bytes)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where an interface's tap queues come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A tap interface opened (and created if missing) by name.
    Name(String),
    /// Open tap queues handed to the VMM (inherited or SCM_RIGHTS), one
    /// per queue pair; each is duplicated when a VM is built, so a reboot
    /// builds again from them.
    Fds(Vec<i32>),
}

/// One validated network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap queues.
    pub tap: TapSource,
    /// The guest's MAC address.
    pub mac: MacAddress,
    /// Queue pairs (1 to [`MAX_NET_PAIRS`]).
    pub queue_pairs: u16,
    /// Virtqueue size (a power of two up to [`MAX_NET_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// The key of its counters (`_net<N>` unless given).
    pub id: String,
}

fn invalid(option: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parses one `--net` specification; `index` names it `_net<index>`
/// when it has no id.
pub fn parse_net(spec: &str, index: usize) -> Result<NetConfig> {
    let mut api = vmapi::NetConfig {
        tap: None,
        mac: None,
        num_queues: 2,
        queue_size: DEFAULT_NET_QUEUE_SIZE,
        id: None,
        fd: None,
    };
    let bad = |reason: String| invalid("--net", spec, reason);
    // `fd=[3,4]` holds a comma: split on commas outside brackets.
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&spec[start..]);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not key=value")))?;
        let number = |what: &str| {
            value
                .parse::<u16>()
                .map_err(|_| bad(format!("{what} must be a number up to 65535")))
        };
        match key {
            "tap" => api.tap = Some(value.to_string()),
            "mac" => api.mac = Some(value.to_string()),
            "num_queues" => api.num_queues = number("num_queues")?,
            "queue_size" => api.queue_size = number("queue_size")?,
            "id" => api.id = Some(value.to_string()),
            "fd" => {
                let list = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .unwrap_or(value);
                let fds = list
                    .split(',')
                    .map(|n| n.trim().parse::<i32>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad("fd must be a number or a list [N,M]".into()))?;
                api.fd = Some(fds);
            }
            _ => return Err(bad(format!("unknown key '{key}'"))),
        }
    }
    from_api(&api, index, true)
}

/// Validates CH's `NetConfig` number `index`. `fds_allowed`: whether
/// `fd` may name any descriptor this process holds (the command line's
/// inherited ones); otherwise only those handed over with an API request
/// ([`take_handed_fds`]).
pub fn from_api(api: &vmapi::NetConfig, index: usize, fds_allowed: bool) -> Result<NetConfig> {
    let num_queues = api.num_queues;
    if num_queues < 2 || !num_queues.is_multiple_of(2) || num_queues > 2 * MAX_NET_PAIRS {
        return Err(invalid(
            "net.num_queues",
            num_queues,
            format!(
                "must be an even number from 2 to {} (two per queue pair)",
                2 * MAX_NET_PAIRS
            ),
        ));
    }
    let queue_pairs = num_queues / 2;
    let queue_size = api.queue_size;
    if queue_size == 0 || queue_size > MAX_NET_QUEUE_SIZE || !queue_size.is_power_of_two() {
        return Err(invalid(
            "net.queue_size",
            queue_size,
            format!("must be a power of two up to {MAX_NET_QUEUE_SIZE}"),
        ));
    }
    let mac = match &api.mac {
        None => MacAddress::random(),
        Some(text) => MacAddress::parse(text).ok_or_else(|| {
            invalid(
                "net.mac",
                excerpt(text),
                "expected a unicast address like 52:54:00:12:34:56",
            )
        })?,
    };
    let id = api.id.clone().unwrap_or_else(|| format!("_net{index}"));
    if id.is_empty() || id.len() > MAX_NET_ID_LEN || id.chars().any(|c| c.is_control()) {
        return Err(invalid(
            "net.id",
            excerpt(&id),
            format!("1 to {MAX_NET_ID_LEN} printable characters"),
        ));
    }
    let tap = match (&api.tap, &api.fd) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "net.fd",
                "(with tap)",
                "give either tap or fd, not both",
            ))
        }
        (None, None) => return Err(invalid("net.tap", "(none)", "tap=NAME or fd=N is needed")),
        (Some(name), None) => {
            if name.is_empty()
                || name.len() > MAX_TAP_NAME
                || name.contains(['/', '\0', ' '])
                || name == "."
                || name == ".."
            {
                return Err(invalid(
                    "net.tap",
                    excerpt(name),
                    format!("an interface name of 1 to {MAX_TAP_NAME} characters"),
                ));
            }
            TapSource::Name(name.clone())
        }
        (None, Some(fds)) => {
            let handed = || {
                let registry = HANDED_OVER.lock().expect("fd registry lock");
                fds.iter().all(|fd| registry.contains(fd))
            };
            if !fds_allowed && !handed() {
                return Err(invalid(
                    "net.fd",
                    format!("{fds:?}"),
                    "tap fds must come with the request (SCM_RIGHTS)",
                ));
            }
            if fds.len() != usize::from(queue_pairs) {
                return Err(invalid(
                    "net.fd",
                    format!("{fds:?}"),
                    format!("one fd per queue pair: {queue_pairs} expected"),
                ));
            }
            if let Some(fd) = fds.iter().find(|&&fd| fd < 3) {
                return Err(invalid(
                    "net.fd",
                    fd,
                    "not a tap (standard input, output or error)",
                ));
            }
            TapSource::Fds(fds.clone())
        }
    };
    Ok(NetConfig {
        tap,
        mac,
        queue_pairs,
        queue_size,
        id,
    })
}

/// CH's `NetConfig` of a validated interface (for vm.info).
pub fn to_api(net: &NetConfig) -> vmapi::NetConfig {
    let (tap, fd) = match &net.tap {
        TapSource::Name(name) => (Some(name.clone()), None),
        TapSource::Fds(fds) => (None, Some(fds.clone())),
    };
    vmapi::NetConfig {
        tap,
        mac: Some(net.mac.to_string()),
        num_queues: net.queue_pairs * 2,
        queue_size: net.queue_size,
        id: Some(net.id.clone()),
        fd,
    }
}

/// Writes each validated interface's MAC into the configuration as given
/// where it had none (a random one was drawn), as CH's vm.info shows it:
/// a snapshot's or a migration's configuration then names the MAC the
/// guest's driver read.
pub fn fill_macs(given: &mut vmapi::VmConfig, nets: &[NetConfig]) {
    for (entry, net) in given.net.iter_mut().flatten().zip(nets) {
        entry.mac.get_or_insert_with(|| net.mac.to_string());
    }
}

/// Descriptors handed over with API requests (SCM_RIGHTS) and kept
/// open for the VMM's life: the only ones vm.create's `fd` may name.
static HANDED_OVER: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Takes the descriptors `fds` that came with `request`: for vm.create
/// and vm.add-net, they replace the `fd` placeholders of its `net`
/// entries in order, as in Cloud Hypervisor (and stay open from then
/// on); any other request, or a count that does not match, is refused
/// (400) and the descriptors closed. Returns the request and the numbers
/// of the descriptors it now holds, which [`release_handed`] closes when
/// the controller refuses the request.
pub fn take_handed_fds(
    request: crate::control::ApiRequest,
    fds: Vec<std::os::fd::OwnedFd>,
) -> std::result::Result<(crate::control::ApiRequest, Vec<i32>), vmapi::Response> {
    use crate::control::ApiRequest;
    if fds.is_empty() {
        return Ok((request, Vec::new()));
    }
    let mut request = request;
    let restored = match &mut request {
        ApiRequest::VmRestore { net_fds, .. } => Some(net_fds),
        ApiRequest::VmReceiveMigration(receive) => Some(&mut receive.net_fds),
        _ => None,
    };
    if let Some(restored) = restored {
        return take_restored_fds(restored, fds).map(|taken| (request, taken));
    }
    let nets: &mut [vmapi::NetConfig] = match &mut request {
        ApiRequest::VmCreate(config) => config.net.as_deref_mut().unwrap_or(&mut []),
        ApiRequest::VmAddNet(net) => std::slice::from_mut(&mut **net),
        _ => {
            return Err(vmapi::Response::error(
                400,
                &[format!(
                    "{} descriptor(s) came with a request that takes none (only vm.create, vm.add-net, vm.restore and vm.receive-migration do)",
                    fds.len()
                )],
            ))
        }
    };
    let placeholders: usize = nets
        .iter()
        .filter_map(|n| n.fd.as_ref())
        .map(Vec::len)
        .sum();
    if placeholders != fds.len() {
        return Err(vmapi::Response::error(
            400,
            &[format!(
                "net[].fd names {placeholders} descriptor(s) but {} came with the request",
                fds.len()
            )],
        ));
    }
    let mut received = fds.into_iter();
    let mut handed = HANDED_OVER.lock().expect("fd registry lock");
    let mut taken = Vec::with_capacity(placeholders);
    for slot in nets.iter_mut().filter_map(|n| n.fd.as_mut()).flatten() {
        let fd = received.next().expect("counted above");
        *slot = std::os::fd::IntoRawFd::into_raw_fd(fd);
        handed.insert(*slot);
        taken.push(*slot);
    }
    Ok((request, taken))
}

/// Closes the descriptors `fds` handed over with a request the controller
/// refused (an error status): no configuration kept them (a refused
/// vm.create, vm.add-net, vm.restore or vm.receive-migration leaves none
/// behind, and devices work on duplicates), so without this they would
/// stay open for the VMM's life.
pub fn release_handed(fds: &[i32]) {
    let mut handed = HANDED_OVER.lock().expect("fd registry lock");
    for fd in fds {
        if handed.remove(fd) {
            crate::sys::close_fd(*fd);
        }
    }
}

/// Most `net_fds` entries of one vm.restore or vm.receive-migration.
const MAX_RESTORED_NETS: usize = crate::layout::MAX_DISKS;

/// Checks the `net_fds` of vm.restore or vm.receive-migration (a 400
/// answer names what is wrong): at most one entry per device slot, each
/// with an id and 1 to [`MAX_NET_PAIRS`] descriptors, `fds` (when given)
/// as long as `num_fds` says.
pub fn checked_net_fds(
    net_fds: Option<Vec<vmapi::RestoredNetConfig>>,
) -> std::result::Result<Vec<vmapi::RestoredNetConfig>, vmapi::Response> {
    let net_fds = net_fds.unwrap_or_default();
    let bad = |text: String| vmapi::Response::error(400, &[text]);
    if net_fds.len() > MAX_RESTORED_NETS {
        return Err(bad(format!(
            "net_fds has {} entries; at most {MAX_RESTORED_NETS}",
            net_fds.len()
        )));
    }
    for (i, entry) in net_fds.iter().enumerate() {
        if entry.id.is_empty() || entry.id.len() > MAX_NET_ID_LEN {
            return Err(bad(format!(
                "net_fds[{i}].id {:?}: 1 to {MAX_NET_ID_LEN} characters",
                excerpt(&entry.id)
            )));
        }
        if entry.num_fds == 0 || entry.num_fds > usize::from(MAX_NET_PAIRS) {
            return Err(bad(format!(
                "net_fds[{i}].num_fds {}: must be 1 to {MAX_NET_PAIRS}",
                entry.num_fds
            )));
        }
        if let Some(fds) = &entry.fds {
            if fds.len() != entry.num_fds {
                return Err(bad(format!(
                    "net_fds[{i}].fds has {} descriptors but num_fds is {}",
                    fds.len(),
                    entry.num_fds
                )));
            }
        }
        if net_fds[..i].iter().any(|e| e.id == entry.id) {
            return Err(bad(format!("net_fds[{i}].id {:?} is repeated", entry.id)));
        }
    }
    Ok(net_fds)
}

/// Gives each `net_fds` entry, in order, `num_fds` of the descriptors
/// that came with the request (kept open from then on, as vm.create's).
fn take_restored_fds(
    net_fds: &mut [vmapi::RestoredNetConfig],
    fds: Vec<std::os::fd::OwnedFd>,
) -> std::result::Result<Vec<i32>, vmapi::Response> {
    let wanted: usize = net_fds.iter().map(|e| e.num_fds).sum();
    if wanted != fds.len() {
        return Err(vmapi::Response::error(
            400,
            &[format!(
                "net_fds names {wanted} descriptor(s) but {} came with the request",
                fds.len()
            )],
        ));
    }
    let mut received = fds.into_iter();
    let mut handed = HANDED_OVER.lock().expect("fd registry lock");
    let mut all = Vec::with_capacity(wanted);
    for entry in net_fds {
        let taken: Vec<i32> = received
            .by_ref()
            .take(entry.num_fds)
            .map(std::os::fd::IntoRawFd::into_raw_fd)
            .collect();
        handed.extend(taken.iter().copied());
        all.extend(taken.iter().copied());
        entry.fds = Some(taken);
    }
    Ok(all)
}

/// Puts the descriptors of `net_fds` in place of the saved ones of the
/// interfaces they name, in the configuration `given` of a snapshot or a
/// migration (`what` names the request). The saved numbers were another
/// process's: an interface whose tap was a descriptor and gets none here
/// is refused, as is an entry naming no such interface.
pub fn replace_fds(
    given: &mut vmapi::VmConfig,
    net_fds: &[vmapi::RestoredNetConfig],
    what: &str,
) -> Result<()> {
    let nets = given.net.as_deref_mut().unwrap_or(&mut []);
    let id_of = |net: &vmapi::NetConfig, index: usize| {
        net.id.clone().unwrap_or_else(|| format!("_net{index}"))
    };
    for entry in net_fds {
        let Some(net) = nets
            .iter_mut()
            .enumerate()
            .find_map(|(i, n)| (id_of(n, i) == entry.id).then_some(n))
        else {
            return Err(invalid(
                "net_fds.id",
                excerpt(&entry.id),
                "no interface of the VM has that id",
            ));
        };
        if net.fd.is_none() {
            return Err(invalid(
                "net_fds.id",
                excerpt(&entry.id),
                "that interface opens its tap by name, not from descriptors",
            ));
        }
        let fds = entry.fds.clone().ok_or_else(|| {
            invalid(
                "net_fds.fds",
                excerpt(&entry.id),
                "no descriptors came with the request (SCM_RIGHTS)",
            )
        })?;
        net.fd = Some(fds);
    }
    for (index, net) in nets.iter().enumerate() {
        let id = id_of(net, index);
        if net.fd.is_some() && !net_fds.iter().any(|e| e.id == id) {
            return Err(invalid(
                "net_fds",
                excerpt(&id),
                format!(
                    "interface '{id}' had its tap as a descriptor; {what} needs this host's tap for it in net_fds (SCM_RIGHTS)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks ids are unique among the interfaces and the disks.
pub fn check_ids(nets: &[NetConfig], disk_ids: &[&str]) -> Result<()> {
    for (i, net) in nets.iter().enumerate() {
        if disk_ids.contains(&net.id.as_str()) || nets[..i].iter().any(|n| n.id == net.id) {
            return Err(invalid("net.id", &net.id, "used twice"));
        }
    }
    Ok(())
}

fn excerpt(text: &str) -> String {
    text.chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(id: &str, fds: Option<Vec<i32>>) -> vmapi::RestoredNetConfig {
        vmapi::RestoredNetConfig {
            id: id.into(),
            num_fds: fds.as_ref().map_or(1, Vec::len),
            fds,
        }
    }

    fn given_with_nets(nets: Vec<vmapi::NetConfig>) -> vmapi::VmConfig {
        let mut given: vmapi::VmConfig =
            serde_json::from_str(r#"{"payload":{"kernel":"/k"}}"#).unwrap();
        given.net = Some(nets);
        given
    }

    fn api_net(id: Option<&str>, tap: Option<&str>, fd: Option<Vec<i32>>) -> vmapi::NetConfig {
        vmapi::NetConfig {
            tap: tap.map(String::from),
            mac: None,
            num_queues: 2,
            queue_size: 256,
            id: id.map(String::from),
            fd,
        }
    }

    #[test]
    fn restored_fds_replace_the_saved_ones_by_id() {
        let mut given = given_with_nets(vec![
            api_net(Some("vnet0"), None, Some(vec![7])),
            api_net(None, Some("usertap"), None),
            api_net(None, None, Some(vec![9])),
        ]);
        let net_fds = [
            restored("_net2", Some(vec![21])),
            restored("vnet0", Some(vec![20])),
        ];
        replace_fds(&mut given, &net_fds, "vm.restore").unwrap();
        let nets = given.net.as_ref().unwrap();
        assert_eq!(nets[0].fd, Some(vec![20]));
        assert_eq!(nets[1].fd, None);
        assert_eq!(nets[2].fd, Some(vec![21]));
    }

    #[test]
    fn restored_fds_that_do_not_fit_are_refused() {
        let saved = || {
            given_with_nets(vec![
                api_net(Some("vnet0"), None, Some(vec![7])),
                api_net(Some("usertap"), Some("usertap"), None),
            ])
        };
        let cases: [(&[vmapi::RestoredNetConfig], &str); 4] = [
            (&[], "needs this host's tap for it in net_fds"),
            (
                &[restored("nope", Some(vec![3]))],
                "no interface of the VM has that id",
            ),
            (
                &[restored("usertap", Some(vec![3]))],
                "opens its tap by name",
            ),
            (
                &[restored("vnet0", None)],
                "no descriptors came with the request",
            ),
        ];
        for (net_fds, expected) in cases {
            let mut given = saved();
            let err = replace_fds(&mut given, net_fds, "vm.receive-migration")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{net_fds:?}: {err}");
            assert_eq!(given.net.as_ref().unwrap()[1].fd, None);
        }
    }

    #[test]
    fn net_fds_bodies_are_bounded() {
        assert!(checked_net_fds(None).unwrap().is_empty());
        let too_many = (0..=MAX_RESTORED_NETS)
            .map(|i| restored(&format!("n{i}"), None))
            .collect();
        let bad_bodies = [
            too_many,
            vec![restored("", None)],
            vec![vmapi::RestoredNetConfig {
                id: "a".into(),
                num_fds: 0,
                fds: None,
            }],
            vec![vmapi::RestoredNetConfig {
                id: "a".into(),
                num_fds: usize::MAX,
                fds: None,
            }],
            vec![vmapi::RestoredNetConfig {
                id: "a".into(),
                num_fds: 2,
                fds: Some(vec![5]),
            }],
            vec![restored("a", None), restored("a", None)],
        ];
        for body in bad_bodies {
            let answer = checked_net_fds(Some(body.clone())).unwrap_err();
            assert_eq!(answer.status, 400, "{body:?}");
        }
        assert_eq!(
            checked_net_fds(Some(vec![restored("a", None)]))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn ch_syntax_is_parsed() {
        let net = parse_net("tap=vmtap0,mac=52:54:00:ab:cd:ef,num_queues=4", 0).unwrap();
        assert_eq!(net.tap, TapSource::Name("vmtap0".into()));
        assert_eq!(net.mac.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!((net.queue_pairs, net.queue_size), (2, 256));
        assert_eq!(net.id, "_net0");
        let net = parse_net("fd=[5,6],num_queues=4,id=eth0,queue_size=128", 3).unwrap();
        assert_eq!(net.tap, TapSource::Fds(vec![5, 6]));
        assert_eq!((net.id.as_str(), net.queue_size), ("eth0", 128));
        let net = parse_net("fd=7", 1).unwrap();
        assert_eq!(net.tap, TapSource::Fds(vec![7]));
        let random = parse_net("tap=t", 1).unwrap().mac;
        assert_eq!(random.0[0] & 3, 2, "locally administered unicast");
        assert_eq!(to_api(&net).num_queues, 2);
    }

    #[test]
    fn bad_specs_are_refused_in_one_line() {
        for bad in [
            "",
            "tap",
            "tap=",
            "tap=a-name-longer-than-15",
            "tap=a/b",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=52:54:00:00:00",
            "tap=t,mac=52:54:00:00:00:0g",
            "tap=t,num_queues=3",
            "tap=t,num_queues=0",
            "tap=t,num_queues=34",
            "tap=t,queue_size=100",
            "tap=t,queue_size=512",
            "tap=t,id=",
            "tap=t,fd=5",
            "fd=[5,6]",
            "fd=1",
            "fd=x",
            "tap=t,color=blue",
        ] {
            let err = parse_net(bad, 0).expect_err(bad).to_string();
            assert!(
                !err.contains('\n') && err.starts_with("invalid "),
                "{bad}: {err}"
            );
        }
        let api = vmapi::NetConfig {
            tap: None,
            mac: None,
            num_queues: 2,
            queue_size: 256,
            id: None,
            fd: Some(vec![9]),
        };
        assert!(from_api(&api, 0, false)
            .unwrap_err()
            .to_string()
            .contains("SCM_RIGHTS"));
    }

    #[test]
    fn a_drawn_mac_is_written_into_the_given_configuration() {
        let mut given: vmapi::VmConfig = serde_json::from_value(serde_json::json!({
            "memory": {"size": 32u64 << 20},
            "payload": {"kernel": "k"},
            "net": [{"tap": "a"}, {"tap": "b", "mac": "52:54:00:00:00:02"}],
        }))
        .unwrap();
        let nets: Vec<NetConfig> = given
            .net
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, n)| from_api(n, i, false).unwrap())
            .collect();
        fill_macs(&mut given, &nets);
        let macs: Vec<_> = given.net.unwrap().into_iter().map(|n| n.mac).collect();
        assert_eq!(macs[0], Some(nets[0].mac.to_string()));
        assert_eq!(macs[1].as_deref(), Some("52:54:00:00:00:02"));
    }

    #[test]
    fn ids_are_unique() {
        let a = parse_net("tap=a,id=x", 0).unwrap();
        let b = parse_net("tap=b,id=x", 1).unwrap();
        assert!(check_ids(&[a.clone(), b], &[]).is_err());
        assert!(check_ids(std::slice::from_ref(&a), &["x"]).is_err());
        assert!(check_ids(&[a], &["vda"]).is_ok());
    }
}
