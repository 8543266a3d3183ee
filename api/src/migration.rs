//! The live-migration requests, in Cloud Hypervisor's names:
//! `VmSendMigrationData` (PUT vm.send-migration on the source) and
//! `VmReceiveMigrationData` (PUT vm.receive-migration on the destination),
//! with the migration URL both take (`unix:PATH` or `tcp:HOST:PORT`).

use serde::{Deserialize, Serialize};

/// The downtime a migration aims for when the request names none (CH's
/// and QEMU's default).
pub const DEFAULT_DOWNTIME_MS: u64 = 300;
/// The longest a migration may take when the request names no timeout
/// (CH's default).
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

/// CH's `VmSendMigrationData` (PUT vm.send-migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSendMigrationData {
    /// Where the destination listens: `unix:PATH` or `tcp:HOST:PORT`.
    pub destination_url: String,
    /// CH's local migration (memory handed over as a file descriptor):
    /// accepted, but memory always travels through the stream here.
    #[serde(default)]
    pub local: bool,
    /// The longest pause the migration aims for, in milliseconds: dirty
    /// passes go on until the estimate of the last one is under it.
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// The longest the migration may take, in seconds; past it the
    /// migration is cancelled and the VM runs on at the source.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Our extension: send the disks too (allocated clusters only), for
    /// hosts that share no storage (`vm migrate --copy-storage-all`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub copy_storage: bool,
    /// Our extension: send only the top image of each disk, its backing
    /// files being at the destination already (`vm migrate
    /// --copy-storage-inc`); excludes `copy_storage`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub copy_storage_incremental: bool,
    /// Our extension: leave the guest paused at the destination (`vm
    /// migrate --suspend`, virsh's).
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,
    /// Our extension: text handed to the destination with the VM (at
    /// most 1 MiB; `vm migrate` sends the domain's XML), which
    /// vm.receive-migration answers with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub annotation: String,
}

impl VmSendMigrationData {
    /// A request for `destination_url` with the default downtime and
    /// timeout.
    pub fn new(destination_url: impl Into<String>) -> Self {
        VmSendMigrationData {
            destination_url: destination_url.into(),
            local: false,
            downtime_ms: DEFAULT_DOWNTIME_MS,
            timeout_s: DEFAULT_TIMEOUT_S,
            copy_storage: false,
            copy_storage_incremental: false,
            suspend: false,
            annotation: String::new(),
        }
    }
}

/// CH's `VmReceiveMigrationData` (PUT vm.receive-migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReceiveMigrationData {
    /// Where to listen for the one incoming migration: `unix:PATH` or
    /// `tcp:HOST:PORT` (only that address is bound).
    pub receiver_url: String,
    /// Our extension: where the migrated guest's serial port goes on this
    /// host (else the source's setting, whose paths may not exist here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<crate::ConsoleConfig>,
    /// Our extension, as vm.restore's: this host's tap descriptors for
    /// the interfaces whose taps were descriptors at the source (they
    /// come with the request, SCM_RIGHTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_fds: Option<Vec<crate::RestoredNetConfig>>,
}

fn default_downtime_ms() -> u64 {
    DEFAULT_DOWNTIME_MS
}

fn default_timeout_s() -> u64 {
    DEFAULT_TIMEOUT_S
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// vm.receive-migration's answer (our extension: CH answers 204): the
/// source's annotation, when it sent one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReceiveMigrationResponse {
    /// The text the source sent with the VM.
    #[serde(default)]
    pub annotation: String,
}

/// A migration URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUrl {
    /// `unix:PATH`.
    Unix(std::path::PathBuf),
    /// `tcp:HOST:PORT` (HOST a name, an IPv4 address or `[IPv6]`).
    Tcp {
        /// The host as written (brackets removed).
        host: String,
        /// The port, not 0.
        port: u16,
    },
}

/// The longest migration URL accepted.
pub const MAX_URL_LEN: usize = 4096;

impl MigrationUrl {
    /// Parses `unix:PATH` or `tcp:HOST:PORT`, naming what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "migration URL of {} bytes, more than {MAX_URL_LEN}",
                url.len()
            ));
        }
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return Err(format!("'{url}' names no socket path"));
            }
            return Ok(MigrationUrl::Unix(path.into()));
        }
        let Some(rest) = url.strip_prefix("tcp:") else {
            return Err(format!(
                "'{url}' is not a migration URL (unix:PATH or tcp:HOST:PORT)"
            ));
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("'{url}': no ']' after the IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("'{url}' has no port"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| format!("'{url}' has no port"))?
        };
        if host.is_empty() {
            return Err(format!("'{url}' has no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{url}': port '{port}' is not 1 to 65535"))?;
        Ok(MigrationUrl::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationUrl::Unix(path) => write!(f, "unix:{}", path.display()),
            MigrationUrl::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUrl::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_take_ch_names_and_defaults() {
        let send: VmSendMigrationData =
            serde_json::from_str(r#"{"destination_url": "unix:/tmp/m.sock"}"#).unwrap();
        assert_eq!(send, VmSendMigrationData::new("unix:/tmp/m.sock"));
        let send: VmSendMigrationData = serde_json::from_str(
            r#"{"destination_url": "tcp:10.0.0.2:4444", "downtime_ms": 50, "timeout_s": 9}"#,
        )
        .unwrap();
        assert_eq!((send.downtime_ms, send.timeout_s), (50, 9));
        let json = serde_json::to_value(VmSendMigrationData::new("unix:/x")).unwrap();
        assert_eq!(json["downtime_ms"], 300);
        assert!(json.get("copy_storage").is_none());
        let receive: VmReceiveMigrationData =
            serde_json::from_str(r#"{"receiver_url": "tcp:0.0.0.0:4444"}"#).unwrap();
        assert_eq!(receive.receiver_url, "tcp:0.0.0.0:4444");
        assert!(receive.serial.is_none());
    }

    #[test]
    fn urls_parse_or_say_why_not() {
        assert_eq!(
            MigrationUrl::parse("unix:/run/m.sock").unwrap(),
            MigrationUrl::Unix("/run/m.sock".into())
        );
        assert_eq!(
            MigrationUrl::parse("tcp:127.0.0.1:4444").unwrap(),
            MigrationUrl::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        let v6 = MigrationUrl::parse("tcp:[::1]:80").unwrap();
        assert_eq!(v6.to_string(), "tcp:[::1]:80");
        for bad in [
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:0",
            "tcp:h:99999",
            "tcp:[::1]80",
            "http://x",
            "",
        ] {
            let err = MigrationUrl::parse(bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(MigrationUrl::parse(&format!("unix:/{}", "a".repeat(5000))).is_err());
    }
}
