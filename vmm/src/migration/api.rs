//! vm.send-migration's and vm.receive-migration's bodies, checked into
//! the requests the controller acts on (400 for what cannot work).

use std::time::Duration;

use vmapi::{ConsoleConfig, MigrationUrl, Response};

use super::receive::{Incoming, Opening};
use super::send::SendOptions;
use super::storage::StorageMode;
use super::transport::Listener;
use super::Result;

/// The longest downtime target accepted (ms).
pub const MAX_DOWNTIME_MS: u64 = 3_600_000;
/// The longest timeout accepted (s): a week.
pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// How long a destination waits for its source to connect.
pub const ACCEPT_DEADLINE: Duration = Duration::from_secs(3600);

/// A checked vm.send-migration.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Where the destination listens.
    pub url: MigrationUrl,
    /// The downtime aimed for.
    pub downtime: Duration,
    /// The longest the migration may take.
    pub timeout: Duration,
    /// Text handed to the destination's manager with the VM.
    pub annotation: String,
    /// Whether the disks travel too.
    pub storage: StorageMode,
    /// Leave the guest paused at the destination.
    pub suspend: bool,
}

impl SendRequest {
    /// The sender's options; `running` when the guest runs here.
    pub fn options(&self, running: bool) -> SendOptions {
        SendOptions {
            url: self.url.clone(),
            downtime: self.downtime,
            timeout: self.timeout,
            running,
            resume: running && !self.suspend,
            annotation: self.annotation.clone(),
            storage: self.storage,
        }
    }
}

/// A checked vm.receive-migration.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    /// Where to listen.
    pub url: MigrationUrl,
    /// Where the guest's serial goes here, if not where it went there.
    pub serial: Option<ConsoleConfig>,
    /// This host's tap descriptors for the fd-backed interfaces.
    pub net_fds: Vec<vmapi::RestoredNetConfig>,
}

impl ReceiveRequest {
    /// Binds the URL's address (only it), waits for the one source, reads
    /// its header and configuration; the listener is gone on return.
    pub fn accept(&self) -> Result<(Incoming, Opening)> {
        let listener = Listener::bind(&self.url)?;
        let connection = listener.accept(ACCEPT_DEADLINE)?;
        drop(listener);
        Incoming::start(connection)
    }
}

fn bad(text: String) -> Response {
    Response::error(400, &[text])
}

/// Checks vm.send-migration's body.
pub fn send_request(
    body: &vmapi::VmSendMigrationData,
) -> std::result::Result<SendRequest, Response> {
    let url = MigrationUrl::parse(&body.destination_url).map_err(bad)?;
    if body.downtime_ms == 0 || body.downtime_ms > MAX_DOWNTIME_MS {
        return Err(bad(format!(
            "downtime_ms {} is not 1 to {MAX_DOWNTIME_MS}",
            body.downtime_ms
        )));
    }
    if body.timeout_s == 0 || body.timeout_s > MAX_TIMEOUT_S {
        return Err(bad(format!(
            "timeout_s {} is not 1 to {MAX_TIMEOUT_S}",
            body.timeout_s
        )));
    }
    if body.annotation.len() > super::stream::MAX_ANNOTATION as usize {
        return Err(bad(format!(
            "annotation of {} bytes, more than {}",
            body.annotation.len(),
            super::stream::MAX_ANNOTATION
        )));
    }
    let storage = match (body.copy_storage, body.copy_storage_incremental) {
        (false, false) => StorageMode::Shared,
        (true, false) => StorageMode::All,
        (false, true) => StorageMode::Incremental,
        (true, true) => {
            return Err(bad(
                "copy_storage and copy_storage_incremental exclude each other".into(),
            ))
        }
    };
    Ok(SendRequest {
        url,
        downtime: Duration::from_millis(body.downtime_ms),
        timeout: Duration::from_secs(body.timeout_s),
        annotation: body.annotation.clone(),
        storage,
        suspend: body.suspend,
    })
}

/// Checks vm.receive-migration's body.
pub fn receive_request(
    body: &vmapi::VmReceiveMigrationData,
) -> std::result::Result<ReceiveRequest, Response> {
    Ok(ReceiveRequest {
        url: MigrationUrl::parse(&body.receiver_url).map_err(bad)?,
        serial: body.serial.clone(),
        net_fds: crate::net_config::checked_net_fds(body.net_fds.clone())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        let ok = send_request(&vmapi::VmSendMigrationData::new("unix:/tmp/x")).unwrap();
        assert_eq!(ok.downtime, Duration::from_millis(300));
        let mut body = vmapi::VmSendMigrationData::new("tcp:h:1");
        body.downtime_ms = 0;
        assert_eq!(send_request(&body).unwrap_err().status, 400);
        body.downtime_ms = 10;
        body.timeout_s = 0;
        assert_eq!(send_request(&body).unwrap_err().status, 400);
        assert_eq!(
            send_request(&vmapi::VmSendMigrationData::new("ftp:x"))
                .unwrap_err()
                .status,
            400
        );
        let receive = vmapi::VmReceiveMigrationData {
            receiver_url: "tcp:127.0.0.1".into(),
            serial: None,
            net_fds: None,
        };
        assert_eq!(receive_request(&receive).unwrap_err().status, 400);
    }
}
