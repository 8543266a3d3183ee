//! The migration's connection: a Unix or TCP stream. The destination binds
//! exactly the address given (nothing else) and accepts one peer within a
//! deadline; both ends read and write under timeouts, so a peer that goes
//! quiet ends the migration instead of hanging it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vmapi::MigrationUrl;

use super::{MigrationError, Result};

/// How long a read or write may wait for the peer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One migration connection.
#[derive(Debug)]
pub enum Connection {
    /// Over a Unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Connection {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Connection::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Connection::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    /// Sets how long a read may wait for the peer (both handles share it).
    pub fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Connection::Unix(s) => s.set_read_timeout(Some(timeout)),
            Connection::Tcp(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> std::io::Result<Connection> {
        Ok(match self {
            Connection::Unix(s) => Connection::Unix(s.try_clone()?),
            Connection::Tcp(s) => Connection::Tcp(s.try_clone()?),
        })
    }

    /// Shuts both directions (the peer sees the end at once).
    pub fn shutdown(&self) {
        let _ = match self {
            Connection::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Connection::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Unix(s) => s.flush(),
            Connection::Tcp(s) => s.flush(),
        }
    }
}

/// Connects to the destination at `url`.
pub fn connect(url: &MigrationUrl) -> Result<Connection> {
    let connection = match url {
        MigrationUrl::Unix(path) => Connection::Unix(
            UnixStream::connect(path)
                .map_err(MigrationError::io(format!("connecting to {url}")))?,
        ),
        MigrationUrl::Tcp { host, port } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(MigrationError::io(format!("resolving {url}")))?
                .collect();
            let mut last = None;
            let mut stream = None;
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (stream, last) {
                (Some(s), _) => Connection::Tcp(s),
                (None, Some(e)) => {
                    return Err(MigrationError::io(format!("connecting to {url}"))(e))
                }
                (None, None) => {
                    return Err(MigrationError::Url(format!(
                        "{url}: the host has no address"
                    )))
                }
            }
        }
    };
    connection
        .set_timeouts(IO_TIMEOUT)
        .map_err(MigrationError::io("setting socket timeouts"))?;
    Ok(connection)
}

/// A bound listener for one migration.
pub enum Listener {
    /// On a Unix socket (removed when the listener goes).
    Unix(UnixListener, std::path::PathBuf),
    /// On a TCP address.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds exactly `url`'s address. A Unix socket file left behind by
    /// an earlier listener is replaced; any other file there is refused.
    pub fn bind(url: &MigrationUrl) -> Result<Listener> {
        match url {
            MigrationUrl::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(MigrationError::Url(format!(
                            "{url}: the path exists and is not a socket"
                        )));
                    }
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path)
                    .map_err(MigrationError::io(format!("listening on {url}")))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            MigrationUrl::Tcp { host, port } => {
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(MigrationError::io(format!("resolving {url}")))?
                    .collect();
                let first = addrs.first().ok_or_else(|| {
                    MigrationError::Url(format!("{url}: the host has no address"))
                })?;
                let listener = TcpListener::bind(first)
                    .map_err(MigrationError::io(format!("listening on {url}")))?;
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// The port a TCP listener got (for port 0 in tests).
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }

    /// Waits up to `deadline` for one peer.
    pub fn accept(&self, deadline: Duration) -> Result<Connection> {
        let start = Instant::now();
        let nonblocking = |result: std::io::Result<()>| {
            result.map_err(MigrationError::io("setting the listener non-blocking"))
        };
        match self {
            Listener::Unix(l, _) => nonblocking(l.set_nonblocking(true))?,
            Listener::Tcp(l) => nonblocking(l.set_nonblocking(true))?,
        }
        loop {
            let accepted = match self {
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Connection::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Connection::Tcp(s)),
            };
            match accepted {
                Ok(connection) => {
                    let blocking = match &connection {
                        Connection::Unix(s) => s.set_nonblocking(false),
                        Connection::Tcp(s) => s.set_nonblocking(false),
                    };
                    blocking.map_err(MigrationError::io("setting the connection blocking"))?;
                    connection
                        .set_timeouts(IO_TIMEOUT)
                        .map_err(MigrationError::io("setting socket timeouts"))?;
                    return Ok(connection);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= deadline {
                        return Err(MigrationError::Io {
                            what: "waiting for the source".into(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no connection within {} s", deadline.as_secs()),
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MigrationError::io("accepting the source")(e)),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
