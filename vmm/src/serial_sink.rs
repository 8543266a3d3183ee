//! Where the guest's serial output goes and where its input comes from,
//! per [`SerialSpec`]: the terminal (Tty), nowhere, a file, or a Unix
//! socket with a log file (Socket). In Socket mode a `console` thread
//! accepts one client at a time (another is turned away while one is
//! attached); what the client sends is the guest's input, and everything
//! the guest prints is appended to the log whether or not a client is
//! attached. Writes to the client never block the vCPU: bytes a slow
//! client cannot take are dropped for it (the log keeps them).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::config::SerialSpec;
use crate::devices::serial::SerialPort;
use crate::error::{Error, Result};

/// The serial socket and log of one VM configuration, surviving reboots.
pub struct ConsoleHub {
    client: Mutex<Option<UnixStream>>,
    log: Option<Mutex<File>>,
    serial: Mutex<Option<Arc<Mutex<SerialPort>>>>,
    socket: PathBuf,
}

fn open_log(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("opening serial log {}", path.display()),
            source,
        })
}

impl ConsoleHub {
    /// Listens on `socket` (mode 0600) and opens `log`; starts the
    /// `console` thread.
    pub fn start(socket: &Path, log: Option<&Path>, seccomp: bool) -> Result<Arc<Self>> {
        let log = log.map(open_log).transpose()?.map(Mutex::new);
        let listener = crate::sock::bind_private(socket)?;
        let hub = Arc::new(ConsoleHub {
            client: Mutex::new(None),
            log,
            serial: Mutex::new(None),
            socket: socket.to_path_buf(),
        });
        let epoll = Epoll::new().map_err(|source| Error::Io {
            what: "epoll".into(),
            source,
        })?;
        let thread_hub = hub.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || thread_hub.serve(listener, epoll, seccomp))
            .map_err(|source| Error::Io {
                what: "starting the console thread".into(),
                source,
            })?;
        Ok(hub)
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects the (new) VM's serial port, for input.
    pub fn attach_serial(&self, serial: Arc<Mutex<SerialPort>>) {
        *self.serial.lock().expect("console lock") = Some(serial);
    }

    /// A writer for the serial port's output.
    pub fn writer(self: &Arc<Self>) -> Box<dyn Write + Send> {
        Box::new(HubWriter(self.clone()))
    }

    fn serve(&self, listener: UnixListener, epoll: Epoll, seccomp: bool) {
        let own = crate::sock::own_uid();
        if seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Console) {
                eprintln!("vmm: console: {e}");
                return;
            }
        }
        const LISTENER: u64 = 0;
        const CLIENT: u64 = 1;
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        ) {
            eprintln!("vmm: console: epoll_ctl: {e}");
            return;
        }
        let mut reader: Option<UnixStream> = None;
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("vmm: console: epoll_wait: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                if event.data() == LISTENER {
                    let Ok((stream, _)) = listener.accept() else {
                        // Out of descriptors or memory: do not spin on it.
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    };
                    let owner = crate::sock::peer_uid(&stream).ok() == Some(own);
                    if reader.is_some() || !owner {
                        continue; // dropped: one client at a time, ours only
                    }
                    let (Ok(()), Ok(writer)) = (stream.set_nonblocking(true), stream.try_clone())
                    else {
                        continue;
                    };
                    if epoll
                        .ctl(
                            ControlOperation::Add,
                            stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, CLIENT),
                        )
                        .is_ok()
                    {
                        *self.client.lock().expect("console lock") = Some(writer);
                        reader = Some(stream);
                    }
                } else if let Some(stream) = reader.as_mut() {
                    let mut buffer = [0u8; 256];
                    match stream.read(&mut buffer) {
                        Ok(0) => self.detach(&epoll, &mut reader),
                        Ok(n) => {
                            if let Some(serial) = &*self.serial.lock().expect("console lock") {
                                serial.lock().expect("serial lock").input(&buffer[..n]);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => self.detach(&epoll, &mut reader),
                    }
                }
            }
        }
    }

    fn detach(&self, epoll: &Epoll, reader: &mut Option<UnixStream>) {
        if let Some(stream) = reader.take() {
            let _ = epoll.ctl(
                ControlOperation::Delete,
                stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        *self.client.lock().expect("console lock") = None;
    }
}

struct HubWriter(Arc<ConsoleHub>);

impl Write for HubWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Some(log) = &self.0.log {
            let _ = log.lock().expect("log lock").write_all(bytes);
        }
        let mut client = self.0.client.lock().expect("console lock");
        if let Some(stream) = client.as_mut() {
            match stream.write(bytes) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *client = None,
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The serial port's output for a spec other than Socket (whose writer
/// comes from its [`ConsoleHub`]).
pub fn plain_writer(spec: &SerialSpec) -> Result<Box<dyn Write + Send>> {
    Ok(match spec {
        SerialSpec::Tty => Box::new(std::io::stdout()),
        SerialSpec::Null | SerialSpec::Socket { .. } => Box::new(std::io::sink()),
        SerialSpec::File(path) => Box::new(open_log(path)?),
    })
}
