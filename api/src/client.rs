//! [`Client`]: a blocking client of the API over a Unix socket, one
//! request per connection, each step under a timeout.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::http::{self, Limits, Method, Response};
use crate::types::{VmBootConfig, VmConfig, VmCounters, VmInfo, VmmPingResponse};

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    connect_timeout: Duration,
    io_timeout: Duration,
    response_limits: Limits,
}

impl Client {
    /// A client of the socket at `path` with a 1 s connect timeout and a
    /// 5 s timeout on sending the request and on receiving the response.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client {
            path: path.into(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(5),
            response_limits: Limits {
                max_head: 8 << 10,
                max_headers: 64,
                max_body: 4 << 20,
                deadline: Duration::from_secs(5),
            },
        }
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the timeouts of sending the request and receiving the response.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self.response_limits.deadline = timeout;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `method path` with an optional body; returns the response
    /// whatever its status.
    pub fn request(&self, method: Method, path: &str, body: Option<&[u8]>) -> Result<Response> {
        let mut stream = connect(&self.path, self.connect_timeout)?;
        let send_error = |source| Error::Send {
            path: self.path.clone(),
            source,
        };
        stream
            .set_write_timeout(Some(self.io_timeout))
            .map_err(send_error)?;
        http::write_request(&mut stream, method, path, body).map_err(send_error)?;
        http::read_response(&mut stream, &self.response_limits).map_err(|source| Error::Response {
            path: self.path.clone(),
            source,
        })
    }

    /// Sends `method path` with `body` and the open descriptors `fds`
    /// attached (SCM_RIGHTS, see [`crate::fds`]); returns the response
    /// whatever its status.
    pub fn request_with_fds(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Response> {
        let mut stream = connect(&self.path, self.connect_timeout)?;
        let send_error = |source| Error::Send {
            path: self.path.clone(),
            source,
        };
        stream
            .set_write_timeout(Some(self.io_timeout))
            .map_err(send_error)?;
        let mut bytes = Vec::new();
        http::write_request(&mut bytes, method, path, Some(body)).map_err(send_error)?;
        let sent = crate::fds::send_with_fds(&stream, &bytes, fds).map_err(send_error)?;
        std::io::Write::write_all(&mut stream, &bytes[sent..]).map_err(send_error)?;
        http::read_response(&mut stream, &self.response_limits).map_err(|source| Error::Response {
            path: self.path.clone(),
            source,
        })
    }

    /// PUT vm.create with tap descriptors for the `fd` lists of its `net`
    /// entries (placeholders, replaced in order by the VMM, as CH does).
    pub fn create_with_fds(
        &self,
        config: &VmConfig,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<()> {
        self.put_with_fds(Endpoint::VmCreate, config, fds)
            .map(|_| ())
    }

    /// PUT vm.add-net: adds interface `net` to the VM (before it boots;
    /// virtio-mmio has no hotplug).
    pub fn add_net(&self, net: &crate::NetConfig) -> Result<()> {
        self.call(Endpoint::VmAddNet, Some(net)).map(|_| ())
    }

    /// [`Client::add_net`] with tap descriptors sent along (SCM_RIGHTS):
    /// `net.fd` holds one placeholder per descriptor, as in vm.create.
    pub fn add_net_with_fds(
        &self,
        net: &crate::NetConfig,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<()> {
        self.put_with_fds(Endpoint::VmAddNet, net, fds).map(|_| ())
    }

    fn put_with_fds<B: Serialize>(
        &self,
        endpoint: Endpoint,
        body: &B,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Response> {
        let body = serde_json::to_vec(body).map_err(|source| Error::Json {
            what: format!("encoding the body of {}", endpoint.name()),
            source,
        })?;
        let response = self.request_with_fds(endpoint.method(), &endpoint.path(), &body, fds)?;
        if response.status >= 300 {
            return Err(Error::Status {
                endpoint: endpoint.name().to_string(),
                status: response.status,
                message: response.error_messages().join(": "),
            });
        }
        Ok(response)
    }

    /// Calls `endpoint` with an optional JSON body; an error status becomes
    /// [`Error::Status`] with the server's messages.
    pub fn call<B: Serialize>(&self, endpoint: Endpoint, body: Option<&B>) -> Result<Response> {
        let body = body
            .map(|b| serde_json::to_vec(b))
            .transpose()
            .map_err(|source| Error::Json {
                what: format!("encoding the body of {}", endpoint.name()),
                source,
            })?;
        let response = self.request(endpoint.method(), &endpoint.path(), body.as_deref())?;
        if response.status >= 300 {
            return Err(Error::Status {
                endpoint: endpoint.name().to_string(),
                status: response.status,
                message: response.error_messages().join(": "),
            });
        }
        Ok(response)
    }

    fn put(&self, endpoint: Endpoint) -> Result<()> {
        self.call::<()>(endpoint, None).map(|_| ())
    }

    fn get<T: DeserializeOwned>(&self, endpoint: Endpoint) -> Result<T> {
        let response = self.call::<()>(endpoint, None)?;
        serde_json::from_slice(response.body.as_deref().unwrap_or_default()).map_err(|source| {
            Error::Json {
                what: format!("decoding the answer of {}", endpoint.name()),
                source,
            }
        })
    }

    /// GET vmm.ping.
    pub fn ping(&self) -> Result<VmmPingResponse> {
        self.get(Endpoint::VmmPing)
    }

    /// GET vm.info.
    pub fn info(&self) -> Result<VmInfo> {
        self.get(Endpoint::VmInfo)
    }

    /// GET vm.counters.
    pub fn counters(&self) -> Result<VmCounters> {
        self.get(Endpoint::VmCounters)
    }

    /// PUT vm.create.
    pub fn create(&self, config: &VmConfig) -> Result<()> {
        self.call(Endpoint::VmCreate, Some(config)).map(|_| ())
    }

    /// PUT vm.boot (with `{"paused": true}` when `paused`).
    pub fn boot(&self, paused: bool) -> Result<()> {
        if paused {
            self.call(Endpoint::VmBoot, Some(&VmBootConfig { paused }))
                .map(|_| ())
        } else {
            self.put(Endpoint::VmBoot)
        }
    }

    /// PUT vm.pause.
    pub fn pause(&self) -> Result<()> {
        self.put(Endpoint::VmPause)
    }

    /// PUT vm.resume.
    pub fn resume(&self) -> Result<()> {
        self.put(Endpoint::VmResume)
    }

    /// PUT vm.shutdown.
    pub fn shutdown(&self) -> Result<()> {
        self.put(Endpoint::VmShutdown)
    }

    /// PUT vm.reboot.
    pub fn reboot(&self) -> Result<()> {
        self.put(Endpoint::VmReboot)
    }

    /// PUT vm.power-button.
    pub fn power_button(&self) -> Result<()> {
        self.put(Endpoint::VmPowerButton)
    }

    /// PUT vm.delete.
    pub fn delete(&self) -> Result<()> {
        self.put(Endpoint::VmDelete)
    }

    /// PUT vm.snapshot into `file://DIR`.
    pub fn snapshot(&self, destination_url: &str) -> Result<()> {
        let body = crate::VmSnapshotConfig {
            destination_url: destination_url.to_string(),
        };
        self.call(Endpoint::VmSnapshot, Some(&body)).map(|_| ())
    }

    /// PUT vm.restore from `source_url`, leaving the VM paused.
    pub fn restore(&self, source_url: &str) -> Result<()> {
        self.restore_then(source_url, false)
    }

    /// PUT vm.restore from `source_url`, running the VM once restored
    /// when `resume` is set (CH's `resume`: one round trip, not two).
    pub fn restore_then(&self, source_url: &str, resume: bool) -> Result<()> {
        let body = crate::RestoreConfig {
            source_url: source_url.to_string(),
            prefault: None,
            net_fds: None,
            resume: resume.then_some(true),
        };
        self.call(Endpoint::VmRestore, Some(&body)).map(|_| ())
    }

    /// PUT vm.restore from `file://DIR` with new tap descriptors `fds`
    /// for the interfaces `net_fds` names (in order, `num_fds` each), as
    /// CH's restore takes them.
    pub fn restore_with_fds(
        &self,
        source_url: &str,
        net_fds: Vec<crate::RestoredNetConfig>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<()> {
        let body = crate::RestoreConfig {
            source_url: source_url.to_string(),
            prefault: None,
            net_fds: Some(net_fds),
            resume: None,
        };
        self.put_with_fds(Endpoint::VmRestore, &body, fds)
            .map(|_| ())
    }

    /// PUT vm.snapshot-delete of in-image snapshot `name`.
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        let body = crate::VmSnapshotDeleteConfig {
            snapshot_name: name.to_string(),
        };
        self.call(Endpoint::VmSnapshotDelete, Some(&body))
            .map(|_| ())
    }

    /// PUT vm.send-migration; returns once the guest runs at the
    /// destination (the source VMM then ends). Give the client an I/O
    /// timeout longer than the migration's.
    pub fn send_migration(&self, body: &crate::VmSendMigrationData) -> Result<()> {
        self.call(Endpoint::VmSendMigration, Some(body)).map(|_| ())
    }

    /// PUT vm.receive-migration; returns once the migrated guest runs
    /// here, with the source's annotation (empty when none). Give the
    /// client an I/O timeout longer than the migration's.
    pub fn receive_migration(
        &self,
        receiver_url: &str,
        serial: Option<crate::ConsoleConfig>,
    ) -> Result<String> {
        self.receive_migration_with_fds(receiver_url, serial, Vec::new(), &[])
    }

    /// [`Client::receive_migration`] with this host's tap descriptors
    /// `fds` for the interfaces `net_fds` names (in order, `num_fds`
    /// each), for those whose taps were descriptors at the source.
    pub fn receive_migration_with_fds(
        &self,
        receiver_url: &str,
        serial: Option<crate::ConsoleConfig>,
        net_fds: Vec<crate::RestoredNetConfig>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<String> {
        let body = crate::VmReceiveMigrationData {
            receiver_url: receiver_url.to_string(),
            serial,
            net_fds: Some(net_fds).filter(|n| !n.is_empty()),
        };
        let response = if fds.is_empty() {
            self.call(Endpoint::VmReceiveMigration, Some(&body))?
        } else {
            self.put_with_fds(Endpoint::VmReceiveMigration, &body, fds)?
        };
        match response.body.as_deref() {
            Some(bytes) if !bytes.is_empty() => {
                let answer: crate::migration::VmReceiveMigrationResponse =
                    serde_json::from_slice(bytes).map_err(|source| Error::Json {
                        what: "decoding the answer of vm.receive-migration".into(),
                        source,
                    })?;
                Ok(answer.annotation)
            }
            _ => Ok(String::new()),
        }
    }

    /// PUT vmm.shutdown.
    pub fn vmm_shutdown(&self) -> Result<()> {
        self.put(Endpoint::VmmShutdown)
    }
}

/// Connects to `path` within `timeout`. A listener whose backlog is full
/// (a hung VMM) makes a non-blocking connect fail with EAGAIN: retry until
/// the deadline rather than block in `connect` for ever.
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let start = Instant::now();
    loop {
        match crate::sys::connect_nonblocking(path) {
            Ok(stream) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|source| Error::Connect {
                        path: path.to_path_buf(),
                        source,
                    })?;
                return Ok(stream);
            }
            Err(crate::sys::ConnectError::TooLong { length, max }) => {
                return Err(Error::PathTooLong {
                    path: path.to_path_buf(),
                    length,
                    max,
                })
            }
            Err(crate::sys::ConnectError::Busy) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(crate::sys::ConnectError::Busy) => {
                return Err(Error::ConnectTimeout {
                    path: path.to_path_buf(),
                    timeout,
                })
            }
            Err(crate::sys::ConnectError::Os(source)) => {
                return Err(Error::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn calls_a_server_and_reads_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for response in [
                Response::ok_json(br#"{"version":"0.1.0","pid":7,"features":[]}"#.to_vec()),
                Response::error(405, &["VM is not running".into()]),
                Response::no_content(),
            ] {
                let (mut stream, _) = listener.accept().unwrap();
                let request = http::read_request(&mut stream, &Limits::default()).unwrap();
                assert!(request.path.starts_with("/api/v1/"));
                response.write_to(&mut stream).unwrap();
            }
        });
        let client = Client::new(&path);
        assert_eq!(client.ping().unwrap().pid, Some(7));
        let err = client.pause().unwrap_err();
        assert_eq!(err.status(), Some(405));
        assert_eq!(err.to_string(), "vm.pause: HTTP 405: VM is not running");
        client.boot(true).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn connect_and_read_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        assert!(matches!(
            Client::new(&path).ping().unwrap_err(),
            Error::Connect { .. }
        ));
        // A server that accepts nothing and answers nothing.
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = Client::new(&path)
            .with_io_timeout(Duration::from_millis(100))
            .ping()
            .unwrap_err();
        assert!(matches!(err, Error::Response { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        let long = dir.path().join("x".repeat(200));
        assert!(matches!(
            Client::new(long).ping().unwrap_err(),
            Error::PathTooLong { .. }
        ));
    }
}
