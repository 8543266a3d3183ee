//! The VM's network interfaces: each one's tap queues, opened before KVM
//! is touched (a missing tap or a bad fd stops us first), and a
//! virtio-mmio slot with blockdev's virtio-net device in front of them,
//! after the disks' slots. Its counters are kept for vm.counters under
//! Cloud Hypervisor's names.
//!
//! Descriptors handed to the VMM (`fd=N`) stay the VMM's: each build
//! takes a duplicate, so a reboot builds the device again from them.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use blockdev::virtio::net::device::NET_CONFIG_SIZE;
use blockdev::virtio::net::{NetCounters, NetOptions, NetResume, Tap, VirtioNet};

use super::event_loop::HeldState;
use super::virtio_mmio::{wire_slot, SlotWiring, VirtioMmio};
use super::Bus;
use crate::error::{Error, Result};
use crate::layout::{virtio_mmio_base, MAX_DISKS, VIRTIO_MMIO_SIZE};
use crate::net_config::{NetConfig, TapSource};
use crate::state::net::NetDeviceState;

/// An interface whose tap queues are open.
pub struct OpenedNet {
    config: NetConfig,
    taps: Vec<Tap>,
}

/// An interface of a built VM, for its counters.
#[derive(Clone)]
pub struct NetDevice {
    /// The interface's id (the key in vm.counters).
    pub id: String,
    /// The tap interface's name.
    pub tap_name: String,
    /// The live counters.
    pub counters: Arc<NetCounters>,
}

fn net_err(config: &NetConfig, reason: impl ToString) -> Error {
    Error::Net {
        id: config.id.clone(),
        reason: reason.to_string(),
    }
}

/// A duplicate of descriptor `fd`, which this process must hold.
fn duplicate_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: F_GETFD reads the descriptor's flags and touches no memory;
    // it fails with EBADF when `fd` is not open, which we check before
    // borrowing it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and stays open for the borrow,
    // which ends with the duplicate made here: the configuration's
    // descriptors are the VMM's until it exits.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Opens every interface's tap queues.
pub fn open_taps(nets: &[NetConfig]) -> Result<Vec<OpenedNet>> {
    nets.iter()
        .map(|config| {
            let taps = match &config.tap {
                TapSource::Name(name) => {
                    Tap::open(name, config.queue_pairs).map_err(|e| net_err(config, e))?
                }
                TapSource::Fds(fds) => fds
                    .iter()
                    .map(|&fd| {
                        let owned = duplicate_fd(fd)
                            .map_err(|e| net_err(config, format!("fd {fd}: {e}")))?;
                        Tap::from_fd(owned).map_err(|e| net_err(config, format!("fd {fd}: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?,
            };
            Ok(OpenedNet {
                config: config.clone(),
                taps,
            })
        })
        .collect()
}

/// Puts each opened interface in a virtio-mmio slot from `first_slot` on
/// (the bus holds the transports; each is also pushed on `transports`,
/// for snapshots).
pub fn attach(
    opened: Vec<OpenedNet>,
    first_slot: usize,
    mmio: &mut Bus,
    transports: &mut Vec<Arc<Mutex<VirtioMmio>>>,
    wiring: &SlotWiring<'_>,
) -> Result<Vec<NetDevice>> {
    let mut devices = Vec::new();
    for (n, net) in opened.into_iter().enumerate() {
        let slot = first_slot + n;
        if slot >= MAX_DISKS {
            return Err(net_err(
                &net.config,
                format!("no virtio-mmio slot left (at most {MAX_DISKS} devices)"),
            ));
        }
        let tap_name = net.taps.first().map(|t| t.name().to_string());
        let device = VirtioNet::new(
            net.taps,
            NetOptions {
                mac: net.config.mac.0,
                queue_size: net.config.queue_size,
            },
        )
        .map_err(|e| net_err(&net.config, e))?;
        devices.push(NetDevice {
            id: net.config.id.clone(),
            tap_name: tap_name.unwrap_or_default(),
            counters: device.counters().clone(),
        });
        let transport = wire_slot(slot, Box::new(device), wiring)
            .map_err(|e| net_err(&net.config, format!("wiring virtio-mmio slot {slot}: {e}")))?;
        transports.push(transport.clone());
        mmio.insert(virtio_mmio_base(slot), VIRTIO_MMIO_SIZE, transport);
    }
    Ok(devices)
}

/// A paused interface's device state beyond its transport: the MAC and
/// queue pairs from its configuration space, and `held`, what its served
/// queues hold (nothing while the driver has not activated it).
pub fn save_state(transport: &VirtioMmio, held: &HeldState) -> NetDeviceState {
    let mut config = [0u8; NET_CONFIG_SIZE];
    transport.read_device_config(0, &mut config);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&config[..6]);
    let max_pairs = u16::from_le_bytes([config[8], config[9]]);
    let mut rx_stash = vec![Vec::new(); usize::from(max_pairs)];
    for (queue, heads) in &held.stashed {
        if let Some(slot) = rx_stash.get_mut(usize::from(*queue / 2)) {
            slot.clone_from(heads);
        }
    }
    // A stash only as long as its last queue holding chains.
    while rx_stash.last().is_some_and(Vec::is_empty) {
        rx_stash.pop();
    }
    NetDeviceState {
        mac,
        max_pairs,
        resume: NetResume {
            active_pairs: held.active_pairs.unwrap_or(1),
            rx_stash,
            announce: transport.saved_announce(),
        },
    }
}

/// Puts a saved interface's state into the fresh `transport` of the
/// interface `config` describes, before the transport's own restore
/// activates it (`activated`: whether it was active; if not, there is
/// nothing to hand over). A state for another MAC or pair count is
/// refused: the guest's driver has read both.
pub fn restore_state(
    transport: &mut VirtioMmio,
    config: &NetConfig,
    saved: &NetDeviceState,
    activated: bool,
) -> Result<()> {
    check_fits(&config.id, config.mac.0, config.queue_pairs, saved)?;
    if !activated {
        return Ok(());
    }
    transport
        .set_resume_state(saved.resume.clone())
        .map_err(|e| net_err(config, e))
}

/// Refuses a saved state of interface `id` for another MAC than `mac` or
/// another pair count than `max_pairs`: the guest's driver has read both.
fn check_fits(id: &str, mac: [u8; 6], max_pairs: u16, saved: &NetDeviceState) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::Net {
            id: id.to_string(),
            reason,
        })
    };
    if saved.mac != mac {
        return refuse(format!(
            "the state has MAC address {}, the interface {}",
            crate::net_config::MacAddress(saved.mac),
            crate::net_config::MacAddress(mac)
        ));
    }
    if saved.max_pairs != max_pairs {
        return refuse(format!(
            "the state has {} queue pairs, the interface {max_pairs}",
            saved.max_pairs
        ));
    }
    Ok(())
}

/// Checks a saved state of interface `id` against the device `transport`
/// serves now (an in-place revert keeps the device and its taps): its
/// configuration space holds the MAC and pair count it was built with.
pub fn check_fits_device(transport: &VirtioMmio, id: &str, saved: &NetDeviceState) -> Result<()> {
    let mut config = [0u8; NET_CONFIG_SIZE];
    transport.read_device_config(0, &mut config);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&config[..6]);
    check_fits(id, mac, u16::from_le_bytes([config[8], config[9]]), saved)
}

/// Puts a saved state of interface `id` into its device, reset by an
/// in-place revert and keeping its taps, before the transport's own
/// restore activates it (`activated`: whether the saved one was active).
pub fn restore_in_place(
    transport: &mut VirtioMmio,
    id: &str,
    saved: &NetDeviceState,
    activated: bool,
) -> Result<()> {
    check_fits_device(transport, id, saved)?;
    if !activated {
        return Ok(());
    }
    transport
        .set_resume_state(saved.resume.clone())
        .map_err(|reason| Error::Net {
            id: id.to_string(),
            reason,
        })
}

/// An interface's counters under CH's names (`rx_bytes`, `rx_frames`,
/// `tx_bytes`, `tx_frames`) and the drops and errors libvirt reports
/// (`rx_dropped`, `rx_errors`, `tx_dropped`, `tx_errors`); with several
/// queue pairs also each pair's frames (`pairN_rx_frames`,
/// `pairN_tx_frames`), which show the guest's multiqueue use.
pub fn counters_map(counters: &NetCounters) -> BTreeMap<String, u64> {
    let s = counters.snapshot();
    let pairs = counters.pairs();
    let per_pair = (0..pairs).filter(|_| pairs > 1).flat_map(|pair| {
        let (rx, tx) = counters.pair_frames(pair);
        [
            (format!("pair{pair}_rx_frames"), rx),
            (format!("pair{pair}_tx_frames"), tx),
        ]
    });
    [
        ("rx_bytes", s.rx_bytes),
        ("rx_frames", s.rx_frames),
        ("rx_dropped", s.rx_dropped),
        ("rx_errors", s.rx_errors),
        ("tx_bytes", s.tx_bytes),
        ("tx_frames", s.tx_frames),
        ("tx_dropped", s.tx_dropped),
        ("tx_errors", s.tx_errors),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .chain(per_pair)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_fd_is_refused_in_one_line() {
        let config = crate::net_config::parse_net("fd=987654", 0).expect("spec");
        let err = open_taps(&[config]).err().expect("closed fd").to_string();
        assert!(
            err.starts_with("network interface '_net0': fd 987654:"),
            "{err}"
        );
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
        let config = crate::net_config::parse_net(&format!("fd={fd}"), 1).expect("spec");
        let err = open_taps(&[config]).err().expect("not a tap").to_string();
        assert!(err.contains("TUNGETIFF"), "{err}");
    }

    #[test]
    fn a_state_for_another_mac_or_pair_count_is_refused_in_one_line() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let saved = NetDeviceState {
            mac,
            max_pairs: 2,
            resume: NetResume::default(),
        };
        assert!(check_fits("net0", mac, 2, &saved).is_ok());
        let other_mac = check_fits("net0", [0x52, 0x54, 0, 0, 0, 1], 2, &saved)
            .expect_err("another MAC")
            .to_string();
        assert_eq!(
            other_mac,
            "network interface 'net0': the state has MAC address 52:54:00:12:34:56, \
             the interface 52:54:00:00:00:01"
        );
        let other_pairs = check_fits("net0", mac, 4, &saved)
            .expect_err("another pair count")
            .to_string();
        assert!(
            other_pairs.ends_with("the state has 2 queue pairs, the interface 4"),
            "{other_pairs}"
        );
    }

    #[test]
    fn counters_have_ch_names() {
        let map = counters_map(&NetCounters::default());
        for name in ["rx_bytes", "rx_frames", "tx_bytes", "tx_frames"] {
            assert_eq!(map.get(name), Some(&0), "{name}");
        }
        assert_eq!(map.len(), 8);
        let two = counters_map(&NetCounters::new(2));
        assert_eq!(two.len(), 12);
        assert_eq!(two.get("pair1_tx_frames"), Some(&0));
    }
}
