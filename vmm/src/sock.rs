//! Unix sockets only their owner may use: bound mode 0600 (a stale socket
//! left by a killed VMM is replaced; a live one is refused), and peers
//! checked with SO_PEERCRED.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::error::{Error, Result};

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Binds a listening socket at `path`, mode 0600.
pub fn bind_private(path: &Path) -> Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidOption {
                option: "socket",
                value: path.display().to_string(),
                reason: "another process is serving it".into(),
            });
        }
        std::fs::remove_file(path).map_err(io(format!("removing stale {}", path.display())))?;
    }
    // Bound and made 0600 under a name of its own, then renamed into
    // place: the path appears only once it accepts connections (a client
    // that sees it never gets ECONNREFUSED, which the gap between bind and
    // listen gave) and never with wider permissions.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let staging = path.with_file_name(format!(
        ".{}.{}.binding",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener =
        UnixListener::bind(&staging).map_err(io(format!("binding {}", path.display())))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod 0600 {}", path.display())))
        .and_then(|()| {
            std::fs::rename(&staging, path).map_err(io(format!("binding {}", path.display())))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// The uid of the process at the other end of `stream` (SO_PEERCRED).
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the descriptor is a live socket owned by `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The uid this process runs as.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no failure mode and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_sockets_replace_stale_ones_and_know_their_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused.
        assert!(bind_private(&path).is_err());
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = first.accept().unwrap();
        assert_eq!(peer_uid(&server).unwrap(), own_uid());
        drop((client, server, first));
        // Stale (nobody listens): replaced.
        bind_private(&path).unwrap();
    }
}
