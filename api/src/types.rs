//! The API's JSON types, named and shaped as Cloud Hypervisor's OpenAPI
//! schema (`cloud-hypervisor.yaml`) names them. Only the fields this
//! project acts on are modelled; other fields CH defines are ignored on
//! input. Our extensions are marked "Extension" on the field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

fn default_one() -> u32 {
    1
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// CH's `CpusConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs started at boot (CH's default 1).
    #[serde(default = "default_one")]
    pub boot_vcpus: u32,
    /// Most vCPUs (CH's default 1; at least `boot_vcpus`).
    #[serde(default = "default_one")]
    pub max_vcpus: u32,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        }
    }
}

/// CH's default guest memory: 512 MiB.
pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;

/// CH's `MemoryConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_SIZE,
        }
    }
}

/// CH's `PayloadConfig`: what to boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Firmware image (not supported by `vmm`: it boots kernels directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// Linux bzImage or ELF vmlinux (or the test guest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// CH's `ImageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// VMDK (`vmm` serves every vmdk subformat under this type).
    FlatVmdk,
    /// VHD (`vmm` serves fixed and dynamic VHDs under this type).
    FixedVhd,
    /// QCOW2.
    Qcow2,
    /// Raw.
    Raw,
    /// VHDX.
    Vhdx,
    /// Unknown (vhost-user only in CH; `vmm` probes).
    Unknown,
}

/// CH's `DiskConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub readonly: bool,
    /// O_DIRECT (libvirt's cache='none').
    #[serde(default)]
    pub direct: bool,
    /// The device's id: the key of its counters (`vm` sets the target
    /// dev, e.g. "vda"); `vmm` names it `_disk<N>` when absent, as CH does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image format; probed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
}

fn default_net_queues() -> u16 {
    2
}

fn default_net_queue_size() -> u16 {
    256
}

/// CH's `NetConfig`: one virtio-net device over a tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap interface to open (created if it does not exist); absent
    /// when `fd` gives open tap queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The guest's MAC address (`52:54:00:12:34:56`); random when absent,
    /// as CH does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Virtqueues: two per queue pair (CH's default 2, one pair).
    #[serde(default = "default_net_queues")]
    pub num_queues: u16,
    /// Size of each virtqueue (CH's default 256).
    #[serde(default = "default_net_queue_size")]
    pub queue_size: u16,
    /// The device's id: the key of its counters (`vm` sets the tap name);
    /// `vmm` names it `_net<N>` when absent, as CH does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Open tap queues, one per pair: descriptors handed over with the
    /// request (SCM_RIGHTS), as libvirt and Kata hand them to CH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<Vec<i32>>,
}

/// CH's `ConsoleMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    Off,
    /// A pseudo-terminal (not supported by `vmm`).
    Pty,
    /// The VMM's own terminal (stdin/stdout).
    Tty,
    /// Output to `file` only.
    File,
    /// A Unix socket at `socket` (one client at a time), and output
    /// appended to `file` when given.
    Socket,
    /// Output dropped.
    Null,
}

/// CH's `ConsoleConfig` (and `SerialConfig`, the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Where output goes (File mode; with Socket mode, our extension: a log
    /// of everything the guest prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The listening socket (Socket mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The mode.
    pub mode: ConsoleMode,
}

impl ConsoleConfig {
    /// A config of `mode` with no file or socket.
    pub fn of_mode(mode: ConsoleMode) -> Self {
        ConsoleConfig {
            file: None,
            socket: None,
            mode,
        }
    }
}

/// CH's `VmConfig` (the body of vm.create, and `config` in vm.info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// vCPUs.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Memory.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot (required, as in CH).
    pub payload: PayloadConfig,
    /// Disks in order (vda, vdb, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// Network interfaces, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// The serial port (CH's `SerialConfig`; CH's default is Null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    /// The virtio console (`vmm` has none: kept and echoed, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
}

/// The body of vm.boot. Extension: CH's vm.boot takes no body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmBootConfig {
    /// Build the VM and its vCPUs but do not run them (state Paused);
    /// vm.resume runs them (libvirt's `start --paused`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

/// CH's `VmSnapshotConfig` (PUT vm.snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshotConfig {
    /// Where the snapshot goes: `file://DIR`.
    pub destination_url: String,
}

/// PUT vm.snapshot-delete (ours): the in-image snapshot to delete from
/// the VM's disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshotDeleteConfig {
    /// The snapshot's name.
    pub snapshot_name: String,
}

/// CH's `RestoreConfig` (PUT vm.restore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreConfig {
    /// Where the snapshot is: `file://DIR`.
    pub source_url: String,
    /// Fault in all of the guest's RAM at once (ours always is: the RAM
    /// is read into fresh memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    /// New tap descriptors for the snapshot's interfaces whose taps were
    /// descriptors (CH's): they come with the request (SCM_RIGHTS), in
    /// order, one per `fds` placeholder (or `num_fds` of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_fds: Option<Vec<RestoredNetConfig>>,
    /// Run the VM once it is restored (CH's `resume`), in the same
    /// request: no vm.resume round trip. Unset or false leaves it paused,
    /// as CH does. Ours applies to every source: `file://DIR`,
    /// `qcow2:NAME` (a revert) and `qcow2-image://PATH#NAME` (a fork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

/// vm.restore's source_url for a fork (ours): the state of full in-image
/// snapshot `snapshot` of the qcow2 image at `image` (absolute), loaded
/// into a created VM whose disks already hold the snapshot's contents:
/// `qcow2-image://PATH#NAME`, NAME with `%` and `#` percent-encoded so
/// the last `#` ends PATH.
pub fn fork_url(image: &std::path::Path, snapshot: &str) -> String {
    let mut encoded = String::with_capacity(snapshot.len());
    for c in snapshot.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    format!("qcow2-image://{}#{encoded}", image.display())
}

/// CH's `RestoredNetConfig`: the tap descriptors of interface `id` of a
/// restored (or, ours, received) VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredNetConfig {
    /// The interface's id in the VM's configuration.
    pub id: String,
    /// How many descriptors (one per queue pair).
    pub num_fds: usize,
    /// The descriptors; the server replaces them with those that came
    /// with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
}

/// CH's `VmState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Created (vm.create), not booted.
    Created,
    /// Running.
    Running,
    /// Shut down (vm.shutdown, or the guest powered off while the VMM
    /// stays).
    Shutdown,
    /// Paused.
    Paused,
}

/// CH's `VmInfo` (GET vm.info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The configuration as given, with defaults filled.
    pub config: VmConfig,
    /// The state.
    pub state: VmState,
    /// Guest RAM in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_actual_size: Option<u64>,
}

/// CH's `VmmPingResponse` (GET vmm.ping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// The build's version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_version: Option<String>,
    /// The version (`X.Y.Z`).
    pub version: String,
    /// The VMM's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Optional features compiled in.
    #[serde(default)]
    pub features: Vec<String>,
}

/// CH's `VmCounters` (GET vm.counters): counters by device id, then by name.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// One disk's counters, under the names CH gives them (latencies in
/// microseconds, as CH's) plus ours (flushes and the time totals in
/// nanoseconds that libvirt's rd.times, wr.times and fl.times report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read requests completed.
    pub read_ops: u64,
    /// Write requests completed.
    pub write_ops: u64,
    /// Shortest read (µs; 0 before the first).
    pub read_latency_min: u64,
    /// Longest read (µs).
    pub read_latency_max: u64,
    /// Mean read (µs).
    pub read_latency_avg: u64,
    /// Shortest write (µs; 0 before the first).
    pub write_latency_min: u64,
    /// Longest write (µs).
    pub write_latency_max: u64,
    /// Mean write (µs).
    pub write_latency_avg: u64,
    /// Extension: flush requests completed.
    pub flush_ops: u64,
    /// Extension: total time of reads (ns).
    pub read_time_ns: u64,
    /// Extension: total time of writes (ns).
    pub write_time_ns: u64,
    /// Extension: total time of flushes (ns).
    pub flush_time_ns: u64,
}

/// The names of [`DiskCounters`]' fields, in order.
pub const DISK_COUNTER_NAMES: [&str; 14] = [
    "read_bytes",
    "write_bytes",
    "read_ops",
    "write_ops",
    "read_latency_min",
    "read_latency_max",
    "read_latency_avg",
    "write_latency_min",
    "write_latency_max",
    "write_latency_avg",
    "flush_ops",
    "read_time_ns",
    "write_time_ns",
    "flush_time_ns",
];

impl DiskCounters {
    fn values(&self) -> [u64; 14] {
        [
            self.read_bytes,
            self.write_bytes,
            self.read_ops,
            self.write_ops,
            self.read_latency_min,
            self.read_latency_max,
            self.read_latency_avg,
            self.write_latency_min,
            self.write_latency_max,
            self.write_latency_avg,
            self.flush_ops,
            self.read_time_ns,
            self.write_time_ns,
            self.flush_time_ns,
        ]
    }

    /// The counters as vm.counters lists them.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        DISK_COUNTER_NAMES
            .iter()
            .zip(self.values())
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }

    /// Reads a disk's counters back from vm.counters; absent names are 0.
    pub fn from_map(map: &BTreeMap<String, u64>) -> Self {
        let get = |name: &str| map.get(name).copied().unwrap_or(0);
        DiskCounters {
            read_bytes: get("read_bytes"),
            write_bytes: get("write_bytes"),
            read_ops: get("read_ops"),
            write_ops: get("write_ops"),
            read_latency_min: get("read_latency_min"),
            read_latency_max: get("read_latency_max"),
            read_latency_avg: get("read_latency_avg"),
            write_latency_min: get("write_latency_min"),
            write_latency_max: get("write_latency_max"),
            write_latency_avg: get("write_latency_avg"),
            flush_ops: get("flush_ops"),
            read_time_ns: get("read_time_ns"),
            write_time_ns: get("write_time_ns"),
            flush_time_ns: get("flush_time_ns"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_config_decodes_as_ch_and_libvirt_send_it() {
        let json = r#"{
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false},
            "memory": {"size": 33554432, "shared": false},
            "payload": {"kernel": "/k", "cmdline": "console=ttyS0", "initramfs": "/i"},
            "disks": [{"path": "/a.qcow2", "readonly": true, "id": "vda", "image_type": "Qcow2", "direct": true}],
            "serial": {"mode": "Socket", "socket": "/run/console.sock", "file": "/run/console.log"},
            "console": {"mode": "Off"},
            "net": [{"tap": "t0"}]
        }"#;
        let config: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.cpus.boot_vcpus, 2);
        assert_eq!(config.memory.size, 32 << 20);
        assert_eq!(config.payload.kernel, Some(PathBuf::from("/k")));
        let disk = &config.disks.as_ref().unwrap()[0];
        assert_eq!(disk.image_type, Some(ImageType::Qcow2));
        assert!(disk.readonly && disk.direct);
        assert_eq!(config.serial.as_ref().unwrap().mode, ConsoleMode::Socket);
        let net = &config.net.as_ref().unwrap()[0];
        assert_eq!(net.tap.as_deref(), Some("t0"));
        assert_eq!((net.num_queues, net.queue_size), (2, 256), "CH's defaults");
        assert!(net.mac.is_none() && net.id.is_none() && net.fd.is_none());
        let again: VmConfig =
            serde_json::from_slice(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn defaults_are_ch_defaults() {
        let config: VmConfig = serde_json::from_str(r#"{"payload": {"kernel": "/k"}}"#).unwrap();
        assert_eq!(config.cpus, CpusConfig::default());
        assert_eq!(config.memory.size, DEFAULT_MEMORY_SIZE);
        assert!(config.disks.is_none() && config.serial.is_none());
        for bad in [
            r#"{}"#,
            r#"{"payload": {}, "cpus": {"boot_vcpus": -1}}"#,
            r#"{"payload": {}, "memory": {"size": "1G"}}"#,
            r#"{"payload": {}, "disks": [{"readonly": true}]}"#,
            r#"{"payload": {}, "serial": {"mode": "Bogus"}}"#,
            r#"[1,2"#,
        ] {
            assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn info_and_counters_have_ch_names() {
        let info = VmInfo {
            config: serde_json::from_str(r#"{"payload": {"kernel": "/k"}}"#).unwrap(),
            state: VmState::Paused,
            memory_actual_size: Some(1 << 25),
        };
        let value = serde_json::to_value(&info).unwrap();
        assert_eq!(value["state"], "Paused");
        assert_eq!(value["memory_actual_size"], 1 << 25);
        assert_eq!(value["config"]["cpus"]["boot_vcpus"], 1);
        let counters = DiskCounters {
            read_ops: 3,
            flush_ops: 2,
            ..DiskCounters::default()
        };
        let map = counters.to_map();
        assert_eq!(map.len(), 14);
        assert_eq!(map["read_ops"], 3);
        assert_eq!(DiskCounters::from_map(&map), counters);
        let boot: VmBootConfig = serde_json::from_str(r#"{"paused": true}"#).unwrap();
        assert!(boot.paused);
    }
}
