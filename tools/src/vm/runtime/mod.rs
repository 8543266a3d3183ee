//! What a domain's VMM is doing, always found anew: a domain is active while
//! the VMM whose pid (and start time) its run folder records still runs.
//! A VMM that is gone is cleaned up on sight: its sockets still there mean
//! it was killed or crashed (a clean exit removes them), so the domain is
//! shut off with reason crashed, else with reason shutdown.

pub mod procfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmapi::{Client, VmInfo, VmState};

use super::format::{reason, state};
use super::store::{DomainLock, Store};
use super::xml::DomainName;
use procfs::ProcessId;

/// How long `list`, `domstats` and friends wait for one VMM's answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The files of a domain's run folder.
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// The run folder at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VMM's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The serial console's socket.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Everything the guest printed.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's own output.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn id_file(&self) -> PathBuf {
        self.dir.join("id")
    }

    fn reason_file(&self) -> PathBuf {
        self.dir.join("reason")
    }

    /// Records the VMM's identity and the domain id.
    pub fn record(&self, process: ProcessId, id: u32) -> std::io::Result<()> {
        fs::write(self.id_file(), format!("{id}\n"))?;
        fs::write(
            self.pid_file(),
            format!("{} {}\n", process.pid, process.start_time),
        )
    }

    /// The recorded VMM, if any.
    pub fn process(&self) -> Option<ProcessId> {
        let text = fs::read_to_string(self.pid_file()).ok()?;
        let mut fields = text.split_whitespace();
        let pid: i32 = fields.next()?.parse().ok()?;
        let start_time = fields.next()?.parse().ok()?;
        (pid > 0).then_some(ProcessId { pid, start_time })
    }

    fn id(&self) -> Option<u32> {
        fs::read_to_string(self.id_file()).ok()?.trim().parse().ok()
    }

    /// Records the reason of the state we just put the domain in. The
    /// file is left alone when it says so already: rewriting it (a
    /// truncation, on ext4 a writeback at close) cost a revert
    /// milliseconds under I/O load.
    pub fn set_reason(&self, state: u32, reason: u32) {
        let line = format!("{state} {reason}\n");
        if fs::read_to_string(self.reason_file()).is_ok_and(|old| old == line) {
            return;
        }
        let _ = fs::write(self.reason_file(), line);
    }

    fn reason_for(&self, wanted_state: u32) -> Option<u32> {
        let text = fs::read_to_string(self.reason_file()).ok()?;
        let mut fields = text.split_whitespace();
        let state: u32 = fields.next()?.parse().ok()?;
        let reason = fields.next()?.parse().ok()?;
        (state == wanted_state).then_some(reason)
    }

    /// Removes what a VMM left (sockets, pid, id, reason, a transient
    /// domain's definition, and its cgroups); logs stay.
    pub fn clean(&self) {
        crate::vm::resources::cgroup::remove_recorded(&self.dir);
        for path in [
            self.dir.join("domain.xml"),
            self.api_socket(),
            self.console_socket(),
            self.pid_file(),
            self.id_file(),
            self.reason_file(),
        ] {
            let _ = fs::remove_file(path);
        }
    }
}

/// A running domain as its VMM reports it.
#[derive(Debug, Clone)]
pub struct Active {
    /// The domain id.
    pub id: u32,
    /// The VMM.
    pub process: ProcessId,
    /// libvirt's state number.
    pub state: u32,
    /// libvirt's reason number.
    pub reason: u32,
    /// vm.info, None if the VMM did not answer in time.
    pub info: Option<VmInfo>,
    /// The run folder.
    pub run: RunFolder,
}

impl Active {
    /// An API client of this VMM with `timeout` on each step.
    pub fn client(&self, timeout: Duration) -> Client {
        Client::new(self.run.api_socket())
            .with_connect_timeout(timeout)
            .with_io_timeout(timeout)
    }
}

/// A domain's runtime status.
#[derive(Debug, Clone)]
pub enum Status {
    /// No VMM runs: shut off, with libvirt's reason.
    Inactive {
        /// Why it last stopped.
        reason: u32,
    },
    /// A VMM runs.
    Active(Box<Active>),
}

impl Status {
    /// libvirt's (state, reason).
    pub fn state(&self) -> (u32, u32) {
        match self {
            Status::Inactive { reason } => (state::SHUTOFF, *reason),
            Status::Active(a) => (a.state, a.reason),
        }
    }

    /// The running side, if active.
    pub fn active(&self) -> Option<&Active> {
        match self {
            Status::Active(a) => Some(a),
            Status::Inactive { .. } => None,
        }
    }
}

/// Finds out what `name`'s VMM is doing, waiting at most `timeout` for its
/// answer. A VMM found gone is cleaned up if `lock` is held (or can be
/// taken at once).
pub fn inspect(
    store: &Store,
    name: &DomainName,
    timeout: Duration,
    lock: Option<&DomainLock>,
) -> Status {
    inspect_with(store, name, Some(timeout), lock)
}

/// [`inspect`] without asking the VMM (no vm.info round trip): whether a
/// VMM runs, and the state and reason recorded when we last changed it,
/// for a command that acts on the VMM at once and needs no more (its own
/// request answers 405 if the VM is in no state for it).
pub fn inspect_recorded(store: &Store, name: &DomainName, lock: Option<&DomainLock>) -> Status {
    inspect_with(store, name, None, lock)
}

/// [`inspect`], asking the VMM for at most `query` (never when `None`).
fn inspect_with(
    store: &Store,
    name: &DomainName,
    query: Option<Duration>,
    lock: Option<&DomainLock>,
) -> Status {
    let run = RunFolder::new(store.run_dir(name));
    let Some(process) = run.process() else {
        return Status::Inactive {
            reason: store.shutoff_reason(name),
        };
    };
    if !procfs::alive(process) {
        let reason = if run.api_socket().exists() {
            reason::SHUTOFF_CRASHED
        } else {
            reason::SHUTOFF_SHUTDOWN
        };
        let own_lock;
        let may_clean = match lock {
            Some(_) => true,
            None => {
                own_lock = store.try_lock(name);
                own_lock.is_some()
            }
        };
        if may_clean {
            let _ = store.set_shutoff_reason(name, reason);
            run.clean();
        }
        return Status::Inactive { reason };
    }
    let id = run.id().unwrap_or(0);
    let info = query.and_then(|timeout| {
        Client::new(run.api_socket())
            .with_connect_timeout(timeout)
            .with_io_timeout(timeout)
            .info()
            .ok()
    });
    let (vm_state, reason) = match info.as_ref().map(|i| i.state) {
        Some(VmState::Running) => (
            state::RUNNING,
            run.reason_for(state::RUNNING)
                .unwrap_or(reason::RUNNING_BOOTED),
        ),
        Some(VmState::Paused) => (
            state::PAUSED,
            run.reason_for(state::PAUSED).unwrap_or(reason::PAUSED_USER),
        ),
        Some(VmState::Created) => (state::PAUSED, reason::PAUSED_STARTING_UP),
        Some(VmState::Shutdown) => (state::SHUTDOWN, 0),
        // Not listening yet: another `vm start` is bringing it up.
        None if !run.api_socket().exists() => (state::PAUSED, reason::PAUSED_STARTING_UP),
        // No answer, or not asked: the last state we put it in.
        None => match run.reason_for(state::PAUSED) {
            Some(r) => (state::PAUSED, r),
            None => (state::RUNNING, run.reason_for(state::RUNNING).unwrap_or(0)),
        },
    };
    Status::Active(Box::new(Active {
        id,
        process,
        state: vm_state,
        reason,
        info,
        run,
    }))
}
