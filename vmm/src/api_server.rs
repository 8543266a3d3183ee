//! The API thread: serves `--api-socket` (mode 0600), refuses peers of
//! another uid (SO_PEERCRED: they get nothing, the connection is closed),
//! reads one bounded request per connection ([`vmapi::http`]), turns it
//! into an [`ApiRequest`] (400 for malformed HTTP or JSON, 404 for an
//! unknown path, 400 for a wrong method, as Cloud Hypervisor answers) and
//! hands it to the controller on the main thread, then writes the answer.
//! It holds no VM logic, and nothing a peer sends can stop the VM. It
//! runs in the real-time class, and raises the controller there for a
//! revert (vm.restore of `qcow2:NAME`), until its answer
//! ([`crate::thread_boost`]).

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Sender};

use vmapi::http::{self, Limits};
use vmapi::{Endpoint, Response};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{ApiCall, ApiLink, ApiRequest};
use crate::error::{Error, Result};

/// Binds `path` and starts the `api` thread.
pub fn start(path: &Path, seccomp: bool) -> Result<ApiLink> {
    let listener = crate::sock::bind_private(path)?;
    let (calls_tx, calls) = channel();
    let (written_tx, written) = channel();
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd".into(),
        source,
    })?;
    let thread_wake = wake.try_clone().map_err(|source| Error::Io {
        what: "eventfd".into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || serve(listener, calls_tx, thread_wake, written_tx, seccomp))
        .map_err(|source| Error::Io {
            what: "starting the API thread".into(),
            source,
        })?;
    Ok(ApiLink {
        calls,
        wake,
        written,
        socket: path.to_path_buf(),
    })
}

fn serve(
    listener: UnixListener,
    calls: Sender<ApiCall>,
    wake: EventFd,
    written: Sender<()>,
    seccomp: bool,
) {
    let own = crate::sock::own_uid();
    // Mostly asleep, and a client waits on each wake-up: on a host whose
    // cores run guests' vCPUs it should get a core at once.
    let _ = crate::thread_boost::raise(0);
    if seccomp {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Api) {
            eprintln!("vmm: API thread: {e}");
            return;
        }
    }
    let limits = Limits::default();
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            // Out of descriptors or memory: do not spin on it.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        if crate::sock::peer_uid(&stream).ok() != Some(own) {
            continue; // another user: closed unanswered
        }
        let response = answer(&mut stream, &limits, &calls, &wake);
        let _ = stream.set_write_timeout(Some(limits.deadline));
        let _ = response.write_to(&mut stream);
        let _ = written.send(());
    }
}

/// Reads the request and gets the controller's answer.
fn answer(
    stream: &mut UnixStream,
    limits: &Limits,
    calls: &Sender<ApiCall>,
    wake: &EventFd,
) -> Response {
    let mut reader = vmapi::fds::FdReader::new(stream);
    let request = match http::read_request(&mut reader, limits) {
        Ok(request) => request,
        Err(e) => return Response::error(400, &[e.to_string()]),
    };
    let fds = reader.into_fds();
    let request = match parse(&request) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let (request, handed) = match crate::net_config::take_handed_fds(request, fds) {
        Ok(taken) => taken,
        Err(response) => return response,
    };
    // A revert: the guest is paused from its start to its resume, and
    // the client waits; the controller gets a core at once.
    let controller = matches!(request, ApiRequest::VmRevertInImage { .. })
        .then(|| crate::thread_boost::raise(std::process::id() as libc::pid_t))
        .flatten();
    let (reply_tx, reply) = channel();
    let call = ApiCall {
        request,
        reply: reply_tx,
    };
    if calls.send(call).is_err() || wake.write(1).is_err() {
        if let Some(before) = controller {
            crate::thread_boost::put_back(before);
        }
        crate::net_config::release_handed(&handed);
        return Response::error(500, &["the VMM is shutting down".to_string()]);
    }
    let response = reply
        .recv()
        .unwrap_or_else(|_| Response::error(500, &["the VMM is shutting down".to_string()]));
    if let Some(before) = controller {
        crate::thread_boost::put_back(before);
    }
    if response.status >= 400 {
        crate::net_config::release_handed(&handed);
    }
    response
}

/// The typed request of an HTTP request, or the error response.
pub fn parse(request: &vmapi::Request) -> std::result::Result<ApiRequest, Response> {
    let endpoint = Endpoint::from_path(&request.path).ok_or_else(|| {
        Response::error(404, &[format!("no endpoint {}", excerpt(&request.path))])
    })?;
    if request.method != endpoint.method() {
        return Err(Response::error(
            400,
            &[format!(
                "{} is not allowed on {}; use {}",
                request.method.as_str(),
                endpoint.name(),
                endpoint.method().as_str()
            )],
        ));
    }
    let bad_json = |e: serde_json::Error| {
        Response::error(400, &[format!("invalid {} body: {e}", endpoint.name())])
    };
    Ok(match endpoint {
        Endpoint::VmmPing => ApiRequest::VmmPing,
        Endpoint::VmmShutdown => ApiRequest::VmmShutdown,
        Endpoint::VmCreate => ApiRequest::VmCreate(Box::new(
            serde_json::from_slice(&request.body).map_err(bad_json)?,
        )),
        Endpoint::VmBoot => {
            let body: vmapi::VmBootConfig = if request.body.iter().all(u8::is_ascii_whitespace) {
                vmapi::VmBootConfig::default()
            } else {
                serde_json::from_slice(&request.body).map_err(bad_json)?
            };
            ApiRequest::VmBoot {
                paused: body.paused,
            }
        }
        Endpoint::VmInfo => ApiRequest::VmInfo,
        Endpoint::VmCounters => ApiRequest::VmCounters,
        Endpoint::VmPause => ApiRequest::VmPause,
        Endpoint::VmResume => ApiRequest::VmResume,
        Endpoint::VmShutdown => ApiRequest::VmShutdown,
        Endpoint::VmReboot => ApiRequest::VmReboot,
        Endpoint::VmPowerButton => ApiRequest::VmPowerButton,
        Endpoint::VmDelete => ApiRequest::VmDelete,
        Endpoint::VmSnapshot => {
            let body: vmapi::VmSnapshotConfig =
                serde_json::from_slice(&request.body).map_err(bad_json)?;
            match in_image_url(&body.destination_url)? {
                Some(name) => ApiRequest::VmSnapshotInImage { name },
                None => ApiRequest::VmSnapshot {
                    dir: file_url(&body.destination_url)?,
                },
            }
        }
        Endpoint::VmRestore => {
            let body: vmapi::RestoreConfig =
                serde_json::from_slice(&request.body).map_err(bad_json)?;
            let resume = body.resume.unwrap_or(false);
            if let Some(source) = crate::state::fork::parse_url(&body.source_url)
                .map_err(|e| Response::error(400, &[excerpt(&e.to_string())]))?
            {
                return Ok(ApiRequest::VmRestoreFork { source, resume });
            }
            match in_image_url(&body.source_url)? {
                Some(name) => ApiRequest::VmRevertInImage { name, resume },
                None => ApiRequest::VmRestore {
                    dir: file_url(&body.source_url)?,
                    net_fds: crate::net_config::checked_net_fds(body.net_fds)?,
                    resume,
                },
            }
        }
        Endpoint::VmSnapshotDelete => {
            let body: vmapi::VmSnapshotDeleteConfig =
                serde_json::from_slice(&request.body).map_err(bad_json)?;
            crate::state::in_image::check_name(&body.snapshot_name)
                .map_err(|e| Response::error(400, &[excerpt(&e.to_string())]))?;
            ApiRequest::VmSnapshotDelete {
                name: body.snapshot_name,
            }
        }
        Endpoint::VmSendMigration => {
            let body: vmapi::VmSendMigrationData =
                serde_json::from_slice(&request.body).map_err(bad_json)?;
            ApiRequest::VmSendMigration(Box::new(crate::migration::api::send_request(&body)?))
        }
        Endpoint::VmReceiveMigration => {
            let body: vmapi::VmReceiveMigrationData =
                serde_json::from_slice(&request.body).map_err(bad_json)?;
            ApiRequest::VmReceiveMigration(Box::new(crate::migration::api::receive_request(&body)?))
        }
        Endpoint::VmAddNet => ApiRequest::VmAddNet(Box::new(
            serde_json::from_slice(&request.body).map_err(bad_json)?,
        )),
    })
}

/// The snapshot name of an in-image URL (`qcow2:NAME`), `None` for any
/// other scheme.
fn in_image_url(url: &str) -> std::result::Result<Option<String>, Response> {
    let Some(name) = url.strip_prefix(crate::state::in_image::URL_SCHEME) else {
        return Ok(None);
    };
    crate::state::in_image::check_name(name)
        .map_err(|e| Response::error(400, &[excerpt(&e.to_string())]))?;
    Ok(Some(name.to_string()))
}

fn file_url(url: &str) -> std::result::Result<std::path::PathBuf, Response> {
    crate::state::snapshot::dir_of_url(url).map_err(|e| Response::error(400, &[excerpt(&e)]))
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
    use vmapi::Method;

    fn request(method: Method, path: &str, body: &[u8]) -> vmapi::Request {
        vmapi::Request {
            method,
            path: path.into(),
            body: body.to_vec(),
            expects_continue: false,
        }
    }

    #[test]
    fn requests_map_to_typed_ones_or_ch_errors() {
        assert!(matches!(
            parse(&request(Method::Get, "/api/v1/vmm.ping", b"")),
            Ok(ApiRequest::VmmPing)
        ));
        assert!(matches!(
            parse(&request(
                Method::Put,
                "/api/v1/vm.boot",
                br#"{"paused": true}"#
            )),
            Ok(ApiRequest::VmBoot { paused: true })
        ));
        assert!(matches!(
            parse(&request(Method::Put, "/api/v1/vm.boot", b"")),
            Ok(ApiRequest::VmBoot { paused: false })
        ));
        let status = |r: std::result::Result<ApiRequest, Response>| r.err().map(|e| e.status);
        assert_eq!(
            status(parse(&request(Method::Get, "/api/v1/vm.nope", b""))),
            Some(404)
        );
        assert_eq!(
            status(parse(&request(Method::Put, "/api/v1/vm.info", b""))),
            Some(400)
        );
        assert_eq!(
            status(parse(&request(Method::Put, "/api/v1/vm.create", b"{"))),
            Some(400)
        );
        assert_eq!(
            status(parse(&request(Method::Put, "/api/v1/vm.create", b"{}"))),
            Some(400)
        );
        let err = parse(&request(
            Method::Put,
            "/api/v1/vm.create",
            b"{\"payload\": 5}",
        ))
        .err()
        .unwrap();
        let messages = err.error_messages();
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].starts_with("invalid vm.create body"),
            "{messages:?}"
        );
    }

    #[test]
    fn a_fork_url_restores_from_another_image() {
        let body = |url: &str| format!("{{\"source_url\": \"{url}\"}}").into_bytes();
        let url = vmapi::fork_url(std::path::Path::new("/i/d.qcow2"), "s#1");
        match parse(&request(Method::Put, "/api/v1/vm.restore", &body(&url))) {
            Ok(ApiRequest::VmRestoreFork { source, resume }) => {
                assert_eq!(source.image, std::path::Path::new("/i/d.qcow2"));
                assert_eq!(source.snapshot, "s#1");
                assert!(!resume);
            }
            _ => panic!("{url} is not a fork"),
        }
        let refused = parse(&request(
            Method::Put,
            "/api/v1/vm.restore",
            &body("qcow2-image://relative.qcow2#s"),
        ));
        assert_eq!(refused.err().map(|e| e.status), Some(400));
    }

    #[test]
    fn a_restore_resumes_in_the_same_request_when_its_body_says_so() {
        let restore =
            |body: &str| parse(&request(Method::Put, "/api/v1/vm.restore", body.as_bytes()));
        let revert = |body: &str| match restore(body) {
            Ok(ApiRequest::VmRevertInImage { name, resume }) => (name, resume),
            _ => panic!("{body} is not a revert"),
        };
        assert_eq!(
            revert(r#"{"source_url": "qcow2:s1", "resume": true}"#),
            ("s1".to_string(), true)
        );
        assert_eq!(
            revert(r#"{"source_url": "qcow2:s1", "resume": false}"#),
            ("s1".to_string(), false)
        );
        // CH's bodies without the field stay paused, as CH leaves them.
        assert_eq!(
            revert(r#"{"source_url": "qcow2:s1", "prefault": true}"#),
            ("s1".to_string(), false)
        );
        match restore(r#"{"source_url": "file:///snap", "resume": true}"#) {
            Ok(ApiRequest::VmRestore { dir, resume, .. }) => {
                assert_eq!(dir, std::path::Path::new("/snap"));
                assert!(resume);
            }
            _ => panic!("not a file restore"),
        }
        let url = vmapi::fork_url(std::path::Path::new("/i/d.qcow2"), "s");
        match restore(&format!(r#"{{"source_url": "{url}", "resume": true}}"#)) {
            Ok(ApiRequest::VmRestoreFork { resume, .. }) => assert!(resume),
            _ => panic!("not a fork"),
        }
        let refused = restore(r#"{"source_url": "qcow2:s1", "resume": "yes"}"#);
        assert_eq!(refused.err().map(|e| e.status), Some(400));
    }
}
