//! The endpoints `vmm` serves, under Cloud Hypervisor's paths and methods.

use crate::http::Method;

/// The API's path prefix.
pub const API_ROOT: &str = "/api/v1";

/// One endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// GET vmm.ping: version and pid.
    VmmPing,
    /// PUT vmm.shutdown: end the VMM process.
    VmmShutdown,
    /// PUT vm.create: define the VM from a VmConfig.
    VmCreate,
    /// PUT vm.boot: run the created VM.
    VmBoot,
    /// GET vm.info: config and state.
    VmInfo,
    /// GET vm.counters: device counters.
    VmCounters,
    /// PUT vm.pause.
    VmPause,
    /// PUT vm.resume.
    VmResume,
    /// PUT vm.shutdown: stop the VM (the VMM stays).
    VmShutdown,
    /// PUT vm.reboot: restart the VM in the same process.
    VmReboot,
    /// PUT vm.power-button: ACPI power button press.
    VmPowerButton,
    /// PUT vm.delete: forget the VM (stopping it first).
    VmDelete,
    /// PUT vm.snapshot: save a paused VM's state into files.
    VmSnapshot,
    /// PUT vm.restore: build a VM, paused, from a snapshot's files.
    VmRestore,
    /// PUT vm.snapshot-delete (ours): delete an in-image snapshot.
    VmSnapshotDelete,
    /// PUT vm.send-migration: move the running VM to a destination.
    VmSendMigration,
    /// PUT vm.receive-migration: wait for one incoming migration.
    VmReceiveMigration,
    /// PUT vm.add-net: add a network interface (CH's NetConfig).
    VmAddNet,
}

/// Every endpoint.
pub const ENDPOINTS: [Endpoint; 18] = [
    Endpoint::VmmPing,
    Endpoint::VmmShutdown,
    Endpoint::VmCreate,
    Endpoint::VmBoot,
    Endpoint::VmInfo,
    Endpoint::VmCounters,
    Endpoint::VmPause,
    Endpoint::VmResume,
    Endpoint::VmShutdown,
    Endpoint::VmReboot,
    Endpoint::VmPowerButton,
    Endpoint::VmDelete,
    Endpoint::VmSnapshot,
    Endpoint::VmRestore,
    Endpoint::VmSnapshotDelete,
    Endpoint::VmSendMigration,
    Endpoint::VmReceiveMigration,
    Endpoint::VmAddNet,
];

impl Endpoint {
    /// The name after `/api/v1/`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::VmmPing => "vmm.ping",
            Endpoint::VmmShutdown => "vmm.shutdown",
            Endpoint::VmCreate => "vm.create",
            Endpoint::VmBoot => "vm.boot",
            Endpoint::VmInfo => "vm.info",
            Endpoint::VmCounters => "vm.counters",
            Endpoint::VmPause => "vm.pause",
            Endpoint::VmResume => "vm.resume",
            Endpoint::VmShutdown => "vm.shutdown",
            Endpoint::VmReboot => "vm.reboot",
            Endpoint::VmPowerButton => "vm.power-button",
            Endpoint::VmDelete => "vm.delete",
            Endpoint::VmSnapshot => "vm.snapshot",
            Endpoint::VmRestore => "vm.restore",
            Endpoint::VmSnapshotDelete => "vm.snapshot-delete",
            Endpoint::VmSendMigration => "vm.send-migration",
            Endpoint::VmReceiveMigration => "vm.receive-migration",
            Endpoint::VmAddNet => "vm.add-net",
        }
    }

    /// The full path (`/api/v1/vm.info`).
    pub fn path(self) -> String {
        format!("{API_ROOT}/{}", self.name())
    }

    /// The method CH uses for it.
    pub fn method(self) -> Method {
        match self {
            Endpoint::VmmPing | Endpoint::VmInfo | Endpoint::VmCounters => Method::Get,
            _ => Method::Put,
        }
    }

    /// The endpoint at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix(API_ROOT)?.strip_prefix('/')?;
        ENDPOINTS.into_iter().find(|e| e.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for endpoint in ENDPOINTS {
            assert_eq!(Endpoint::from_path(&endpoint.path()), Some(endpoint));
        }
        assert_eq!(Endpoint::from_path("/api/v1/vm.send-migrations"), None);
        assert_eq!(Endpoint::from_path("/api/v2/vm.info"), None);
        assert_eq!(Endpoint::from_path("/api/v1vm.info"), None);
    }
}
