//! The one place that acts on the VM: the controller owns the VM's
//! configuration, state and (when built) the [`Vm`], and turns API
//! requests and the guest's events (power off, reset, fault) and
//! SIGINT/SIGTERM into state changes, on the main thread.
//!
//! States, as Cloud Hypervisor's: no VM; Created (vm.create); Running;
//! Paused; Shutdown (vm.shutdown, or a guest fault under the API). A guest
//! reset reboots the VM in place when the API is served (as CH does) and
//! ends `vmm` otherwise; a guest power-off ends `vmm` (exit 0) after its
//! sockets are removed.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::virtio::stats::{DiskStats, StatKind};
use vmapi::{Response, VmState};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{self, SerialSpec, VmConfig, VmmOptions};
use crate::error::{Error, Result};
use crate::serial_sink::ConsoleHub;
use crate::sys::ExitSignals;
use crate::vm::{ExitState, RunTimes, Vm, VmExit, VmHooks};

/// A request of the API, parsed and validated by the API thread.
#[derive(Debug)]
pub enum ApiRequest {
    /// GET vmm.ping.
    VmmPing,
    /// PUT vmm.shutdown.
    VmmShutdown,
    /// PUT vm.create.
    VmCreate(Box<vmapi::VmConfig>),
    /// PUT vm.boot.
    VmBoot {
        /// Build the VM but leave its vCPUs parked.
        paused: bool,
    },
    /// GET vm.info.
    VmInfo,
    /// GET vm.counters.
    VmCounters,
    /// PUT vm.pause.
    VmPause,
    /// PUT vm.resume.
    VmResume,
    /// PUT vm.shutdown.
    VmShutdown,
    /// PUT vm.reboot.
    VmReboot,
    /// PUT vm.power-button.
    VmPowerButton,
    /// PUT vm.delete.
    VmDelete,
    /// PUT vm.snapshot of a paused VM into `dir`.
    VmSnapshot {
        /// The snapshot's directory.
        dir: PathBuf,
    },
    /// PUT vm.restore from the snapshot in `dir`, on a VMM with no VM.
    VmRestore {
        /// The snapshot's directory.
        dir: PathBuf,
        /// New tap descriptors for its fd-backed interfaces.
        net_fds: Vec<vmapi::RestoredNetConfig>,
        /// Run it once restored (CH's `resume`).
        resume: bool,
    },
    /// PUT vm.snapshot with `qcow2:NAME`: a full internal snapshot of the
    /// running or paused VM's disks, its state in the first disk.
    VmSnapshotInImage {
        /// The snapshot's name.
        name: String,
    },
    /// PUT vm.restore with `qcow2:NAME`: revert the created, running,
    /// paused or shut-down VM to that snapshot (left paused unless
    /// `resume`).
    VmRevertInImage {
        /// The snapshot's name.
        name: String,
        /// Run it once reverted (CH's `resume`).
        resume: bool,
    },
    /// PUT vm.restore with `qcow2-image://PATH#NAME`: build the created
    /// (or shut-down) VM from the state of full snapshot NAME in the image
    /// at PATH, paused, its own disks left as they are (a fork).
    VmRestoreFork {
        /// Where the state is.
        source: crate::state::fork::ForkSource,
        /// Run it once built (CH's `resume`).
        resume: bool,
    },
    /// PUT vm.snapshot-delete: delete an in-image snapshot from the disks.
    VmSnapshotDelete {
        /// The snapshot's name.
        name: String,
    },
    /// PUT vm.send-migration.
    VmSendMigration(Box<crate::migration::api::SendRequest>),
    /// PUT vm.receive-migration, on a VMM with no VM.
    VmReceiveMigration(Box<crate::migration::api::ReceiveRequest>),
    /// PUT vm.add-net: a network interface for the created VM, before it
    /// boots (virtio-mmio has no hotplug).
    VmAddNet(Box<vmapi::NetConfig>),
}

/// A request with the channel its response goes back on.
pub struct ApiCall {
    /// The request.
    pub request: ApiRequest,
    /// Where the response goes.
    pub reply: Sender<Response>,
}

/// The controller's side of the API thread.
pub struct ApiLink {
    /// Requests.
    pub calls: Receiver<ApiCall>,
    /// Written with each request.
    pub wake: EventFd,
    /// One message per response the API thread has written.
    pub written: Receiver<()>,
    /// The socket, removed when `vmm` ends.
    pub socket: PathBuf,
}

/// Why `vmm` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest's end (or a signal) without the API, or a power-off.
    Guest(VmExit),
    /// vmm.shutdown.
    VmmShutdown,
}

/// The controller.
pub struct Controller {
    options: VmmOptions,
    started: Instant,
    exit: Arc<ExitState>,
    reset: EventFd,
    given: Option<vmapi::VmConfig>,
    config: Option<VmConfig>,
    state: VmState,
    vm: Option<Vm>,
    stats: Vec<(String, Arc<DiskStats>)>,
    console: Option<Arc<ConsoleHub>>,
    api: Option<ApiLink>,
    times: Option<RunTimes>,
    signals: ExitSignals,
    /// The VM was migrated away: `vmm` ends, leaving the disks alone.
    migrated: bool,
    /// The migration committed, its destination's Resumed not yet heard.
    committed: Option<crate::migration::resumed::Committed>,
    /// A revert replaced disk trees to free once its answer is sent.
    free_after_answer: bool,
    /// When the replaced trees are freed if the guest's first flush has
    /// not freed them by then (see [`FREE_REPLACED_AFTER`]).
    free_due: Option<Instant>,
    /// Log lines to write once the answer is sent.
    log_after_answer: Vec<String>,
    /// The device thread, raised to the real-time class for a revert,
    /// put back when `free_due` passes: the resumed guest's first I/O and
    /// the RAM loader wait on it (a traced revert had it preempted for
    /// 24 ms, holding up the loader, right after its resume).
    raised_until_due: Vec<crate::thread_boost::Before>,
    /// The clocks of the threads a reverted guest's first moments need
    /// (its vCPUs, the device thread, the RAM loader), read from the
    /// answer to `free_due`: how long each ran and waited for a CPU.
    after_revert: Option<crate::migration::sched::WindowClocks>,
}

/// How long after a revert's answer the controller frees the replaced
/// disk trees. The guest's first flush meanwhile writes the revert's
/// refcounts and header with its own metadata (two syncs), after which the
/// freeing syncs nothing (its decrements go out with the next flush);
/// freeing at once, under the image's lock, made that flush wait for the
/// revert's syncs and then sync its own refcounts, tables and frees one
/// step at a time.
const FREE_REPLACED_AFTER: Duration = Duration::from_millis(100);

/// Writes `line` and a newline to stderr in one write (eprintln! writes a
/// formatted line piece by piece, one system call each).
pub(crate) fn log_line(mut line: String) {
    use std::io::Write;
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

const TOKEN_EXIT: u64 = 0;
const TOKEN_RESET: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_API: u64 = 3;

fn error_response(status: u16, error: &dyn std::error::Error) -> Response {
    let mut messages = vec![error.to_string().replace('\n', " ")];
    let mut source = error.source();
    while let Some(cause) = source {
        messages.push(cause.to_string().replace('\n', " "));
        source = cause.source();
    }
    Response::error(status, &messages)
}

fn message(status: u16, text: &str) -> Response {
    Response::error(status, &[text.to_string()])
}

fn state_error(action: &str, state: VmState) -> Response {
    message(405, &format!("cannot {action} a VM in state {state:?}"))
}

impl Controller {
    /// A controller with no VM. Call it before any other thread starts:
    /// it blocks SIGINT and SIGTERM (threads started later inherit that)
    /// and takes them through a signalfd.
    pub fn new(options: VmmOptions, started: Instant) -> Result<Self> {
        let signals = ExitSignals::new()?;
        Ok(Controller {
            signals,
            options,
            started,
            exit: Arc::new(ExitState::new()?),
            reset: EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "eventfd".into(),
                source,
            })?,
            given: None,
            config: None,
            state: VmState::Created,
            vm: None,
            stats: Vec::new(),
            console: None,
            api: None,
            times: None,
            migrated: false,
            committed: None,
            free_after_answer: false,
            free_due: None,
            log_after_answer: Vec::new(),
            raised_until_due: Vec::new(),
            after_revert: None,
        })
    }

    /// Serves the API through `api` (the API thread's link).
    pub fn attach_api(&mut self, api: ApiLink) {
        self.api = Some(api);
    }

    /// Removes the sockets (on a failed start).
    pub fn remove_sockets_now(&mut self) {
        self.remove_sockets();
    }

    /// Creates and boots `config` at once (the command-line VM).
    pub fn boot_now(&mut self, config: VmConfig) -> Result<()> {
        self.given = Some(config::to_api(&config));
        self.config = Some(config);
        self.boot(false)
    }

    /// Serves until `vmm` ends; returns why, with the last VM's times.
    pub fn run(mut self) -> Result<(Ending, Option<RunTimes>)> {
        let epoll = Epoll::new().map_err(|source| Error::Io {
            what: "epoll".into(),
            source,
        })?;
        let mut fds = vec![
            (self.exit.event.as_raw_fd(), TOKEN_EXIT),
            (self.reset.as_raw_fd(), TOKEN_RESET),
            (self.signals.as_raw_fd(), TOKEN_SIGNAL),
        ];
        if let Some(api) = &self.api {
            fds.push((api.wake.as_raw_fd(), TOKEN_API));
        }
        for (fd, token) in fds {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|source| Error::Io {
                    what: "epoll_ctl".into(),
                    source,
                })?;
        }
        if self.api.is_none() && self.options.seccomp {
            // Without the API nothing is built after the boot: the main
            // thread only waits, stops and closes.
            crate::seccomp::apply(crate::seccomp::ThreadKind::Main)?;
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let timeout_ms = match self.free_due {
                None => -1,
                // Rounded up: never woken before it is due.
                Some(due) => due
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000)
                    .min(i32::MAX as u128) as i32,
            };
            let n = match epoll.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        what: "epoll_wait".into(),
                        source,
                    })
                }
            };
            for event in &events[..n] {
                let ending = match event.data() {
                    TOKEN_EXIT => match self.exit.reason() {
                        Some(reason) => self.guest_ended(reason)?,
                        None => None,
                    },
                    TOKEN_RESET => {
                        let _ = self.reset.read();
                        self.guest_ended(VmExit::Reset)?
                    }
                    TOKEN_SIGNAL => self
                        .signals
                        .take()
                        .map(|sig| Ending::Guest(VmExit::Signal(sig))),
                    _ => self.serve_api(),
                };
                if let Some(ending) = ending {
                    self.stop_vm();
                    self.remove_sockets();
                    return Ok((ending, self.times));
                }
            }
            self.free_replaced_if_due();
        }
    }

    /// The guest powered off, reset or faulted.
    fn guest_ended(&mut self, reason: VmExit) -> Result<Option<Ending>> {
        if self.vm.is_none() {
            self.exit.clear();
            return Ok(None);
        }
        if self.api.is_none() {
            return Ok(Some(Ending::Guest(reason)));
        }
        match reason {
            VmExit::Reset => {
                if let Err(e) = self.reboot() {
                    eprintln!("vmm: reboot failed: {e}");
                }
                Ok(None)
            }
            VmExit::Fault(text) => {
                eprintln!("vmm: guest stopped: {text}");
                self.stop_vm();
                self.state = VmState::Shutdown;
                Ok(None)
            }
            other => Ok(Some(Ending::Guest(other))),
        }
    }

    fn serve_api(&mut self) -> Option<Ending> {
        let api = self.api.as_ref()?;
        let _ = api.wake.read();
        let calls: Vec<ApiCall> = api.calls.try_iter().collect();
        let mut ending = None;
        for call in calls {
            let shutdown = matches!(call.request, ApiRequest::VmmShutdown);
            let migration = matches!(call.request, ApiRequest::VmSendMigration(_));
            if shutdown || migration {
                // Forget the acknowledgements of earlier responses.
                if let Some(api) = &self.api {
                    while api.written.try_recv().is_ok() {}
                }
            }
            let response = self.handle(call.request);
            let _ = call.reply.send(response);
            self.after_answer();
            if shutdown || (migration && self.migrated) {
                // Let the API thread write the 204 before the process ends.
                if let Some(api) = &self.api {
                    let _ = api.written.recv_timeout(Duration::from_secs(1));
                }
                if let Some(committed) = self.committed.take() {
                    committed.finish();
                }
                ending = Some(Ending::VmmShutdown);
            }
        }
        ending
    }

    /// Acts on one request; every state change happens here.
    pub fn handle(&mut self, request: ApiRequest) -> Response {
        match request {
            ApiRequest::VmmPing => {
                let ping = vmapi::VmmPingResponse {
                    build_version: Some(format!("vmm v{}", env!("CARGO_PKG_VERSION"))),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    pid: Some(i64::from(std::process::id())),
                    features: Vec::new(),
                };
                json(&ping)
            }
            ApiRequest::VmmShutdown => Response::no_content(),
            ApiRequest::VmCreate(given) => {
                if self.given.is_some() {
                    return message(405, "a VM is already created; vm.delete it first");
                }
                match config::from_api(&given, &self.options) {
                    Ok(config) => {
                        let mut given = config::with_defaults(&given);
                        crate::net_config::fill_macs(&mut given, &config.net);
                        self.given = Some(given);
                        self.config = Some(config);
                        self.state = VmState::Created;
                        self.stats.clear();
                        Response::no_content()
                    }
                    Err(e) => error_response(400, &e),
                }
            }
            ApiRequest::VmRestore {
                dir,
                net_fds,
                resume,
            } => {
                if self.given.is_some() {
                    return message(405, "a VM is already created; vm.delete it first");
                }
                match self.restore(&dir, &net_fds) {
                    Ok(()) => self.resume_if(resume),
                    Err(e) => {
                        self.given = None;
                        self.config = None;
                        error_response(500, &e)
                    }
                }
            }
            ApiRequest::VmReceiveMigration(request) => {
                if self.given.is_some() {
                    return message(405, "a VM is already created; vm.delete it first");
                }
                match self.receive_migration(&request) {
                    Ok(annotation) if annotation.is_empty() => Response::no_content(),
                    Ok(annotation) => {
                        json(&vmapi::migration::VmReceiveMigrationResponse { annotation })
                    }
                    Err(e) => {
                        self.given = None;
                        self.config = None;
                        message(500, &e.to_string())
                    }
                }
            }
            ApiRequest::VmDelete => {
                self.stop_vm();
                self.given = None;
                self.config = None;
                self.stats.clear();
                if let Some(console) = self.console.take() {
                    let _ = std::fs::remove_file(console.socket());
                }
                Response::no_content()
            }
            _ if self.given.is_none() => message(404, "VM is not created"),
            ApiRequest::VmInfo => {
                let config = self.given.clone().expect("checked above");
                json(&vmapi::VmInfo {
                    memory_actual_size: Some(config.memory.size),
                    config,
                    state: self.state,
                })
            }
            ApiRequest::VmCounters => json(&self.counters()),
            ApiRequest::VmSnapshot { dir } => match (self.state, &self.vm, &self.given) {
                (VmState::Paused, Some(vm), Some(given)) => {
                    let config_json = match serde_json::to_vec_pretty(given) {
                        Ok(j) => j,
                        Err(e) => return error_response(500, &e),
                    };
                    match vm.snapshot(&dir, &config_json) {
                        Ok(_) => Response::no_content(),
                        Err(e) => error_response(500, &e),
                    }
                }
                (state, _, _) => state_error("snapshot (pause it first)", state),
            },
            ApiRequest::VmSnapshotInImage { name } => self.snapshot_in_image(&name),
            ApiRequest::VmRevertInImage { name, resume } => {
                let reverted = self.revert_in_image(&name);
                // The old trees are freed once the answer is on its way
                // (after the resume, if asked), whether or not the revert
                // got that far.
                self.free_after_answer = true;
                match reverted {
                    Ok(()) => self.resume_if(resume),
                    Err(e) => error_response(500, &e),
                }
            }
            ApiRequest::VmSnapshotDelete { name } => self.delete_in_image(&name),
            ApiRequest::VmRestoreFork { source, resume } => match self.state {
                VmState::Created | VmState::Shutdown => match self.restore_fork(&source) {
                    Ok(()) => self.resume_if(resume),
                    Err(e) => error_response(500, &e),
                },
                state => state_error("restore a fork into", state),
            },
            ApiRequest::VmSendMigration(request) => match self.state {
                VmState::Running | VmState::Paused => match self.send_migration(&request) {
                    Ok(()) => Response::no_content(),
                    Err(e) => {
                        eprintln!("vmm: {e}");
                        message(500, &e.to_string())
                    }
                },
                state => state_error("migrate", state),
            },
            ApiRequest::VmAddNet(net) => match self.state {
                VmState::Created | VmState::Shutdown => match self.add_net(&net) {
                    Ok(()) => Response::no_content(),
                    Err(e) => error_response(400, &e),
                },
                state => message(
                    405,
                    &format!(
                        "cannot add a network interface to a VM in state {state:?}: virtio-mmio has no hotplug; add it before vm.boot or after vm.shutdown"
                    ),
                ),
            },
            ApiRequest::VmBoot { paused } => match self.state {
                VmState::Created | VmState::Shutdown => match self.boot(paused) {
                    Ok(()) => Response::no_content(),
                    Err(e) => error_response(500, &e),
                },
                state => state_error("boot", state),
            },
            ApiRequest::VmPause => match (self.state, &self.vm) {
                // As QEMU's stop, a pause flushes the disks: a paused
                // VM's images can then be read from outside (vm clone).
                (VmState::Running, Some(vm)) => match vm
                    .pause()
                    .and_then(|()| Ok(crate::state::in_image::flush_images(vm)?))
                {
                    Ok(()) => {
                        self.state = VmState::Paused;
                        Response::no_content()
                    }
                    Err(e) => error_response(500, &e),
                },
                (state, _) => state_error("pause", state),
            },
            ApiRequest::VmResume => self.resume_if(true),
            ApiRequest::VmShutdown => match self.state {
                VmState::Running | VmState::Paused => {
                    self.stop_vm();
                    self.state = VmState::Shutdown;
                    Response::no_content()
                }
                state => state_error("shut down", state),
            },
            ApiRequest::VmReboot => match self.state {
                VmState::Running | VmState::Paused => match self.reboot() {
                    Ok(()) => Response::no_content(),
                    Err(e) => error_response(500, &e),
                },
                state => state_error("reboot", state),
            },
            ApiRequest::VmPowerButton => match (self.state, &self.vm) {
                (VmState::Running, Some(vm)) => match vm.power_button() {
                    Ok(()) => Response::no_content(),
                    Err(e) => error_response(500, &e),
                },
                (state, _) => state_error("press the power button of", state),
            },
        }
    }

    /// vm.resume, or what a restore asked with `resume` (CH's): runs the
    /// paused VM. A restore without it answers 204 with the VM paused.
    fn resume_if(&mut self, resume: bool) -> Response {
        if !resume {
            return Response::no_content();
        }
        match (self.state, &self.vm) {
            (VmState::Paused, Some(vm)) => {
                vm.resume();
                self.state = VmState::Running;
                Response::no_content()
            }
            (state, _) => state_error("resume", state),
        }
    }

    /// What waits until an answer is on its way (the guest runs
    /// meanwhile): the log lines of the request, then the timer of the
    /// freeing of the active trees a revert replaced on the VM's disks.
    fn after_answer(&mut self) {
        for line in std::mem::take(&mut self.log_after_answer) {
            log_line(line);
        }
        if std::mem::take(&mut self.free_after_answer) {
            self.free_due = Some(Instant::now() + FREE_REPLACED_AFTER);
            use crate::migration::sched::{ThreadClock, WindowClocks};
            let mut clocks = ThreadClock::named("vcpu");
            clocks.extend(ThreadClock::named(crate::vm::DEVICE_THREAD));
            clocks.extend(ThreadClock::named("ram loader"));
            self.after_revert = Some(WindowClocks::start(clocks));
        }
    }

    /// Frees the active trees a revert replaced on the VM's disks, when
    /// [`FREE_REPLACED_AFTER`] has passed since its answer and the
    /// guest's first flush has not done it (see
    /// `Qcow2::apply_snapshot_deferring_free` and `Qcow2::flush_metadata`;
    /// a failure leaks clusters only, and is logged).
    fn free_replaced_if_due(&mut self) {
        if self.free_due.is_none_or(|due| Instant::now() < due) {
            return;
        }
        self.free_due = None;
        crate::thread_boost::put_back_all(std::mem::take(&mut self.raised_until_due));
        if let Some(clocks) = self.after_revert.take() {
            // Whether the resumed guest's threads got a CPU when they
            // wanted one (a resumed vCPU waiting for a CPU delays the
            // guest's first instructions).
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let threads: Vec<String> = clocks
                .since_start()
                .into_iter()
                .map(|(name, times)| {
                    format!(
                        "{name} ran {:.1} ms, waited {:.1} ms",
                        ms(times.ran),
                        ms(times.waited)
                    )
                })
                .collect();
            log_line(format!(
                "vmm: revert: from the answer to {} ms after it: {}",
                FREE_REPLACED_AFTER.as_millis(),
                threads.join("; ")
            ));
        }
        if let Some(vm) = &self.vm {
            let started = Instant::now();
            match crate::state::in_image::free_replaced_trees(vm) {
                Ok(0) => {}
                Ok(trees) => log_line(format!(
                    "vmm: revert: the replaced trees of {trees} disks freed after the answer in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                )),
                Err(e) => log_line(format!("vmm: revert: freeing the replaced trees: {e}")),
            }
        }
    }

    /// Defines the VM of the snapshot in `dir` (its config.json) and
    /// builds it from the snapshot's state, paused.
    fn restore(
        &mut self,
        dir: &std::path::Path,
        net_fds: &[vmapi::RestoredNetConfig],
    ) -> Result<()> {
        let path = dir.join(crate::state::snapshot::CONFIG_FILE);
        let bytes = crate::state::snapshot::read_json_file(&path)?;
        let mut given: vmapi::VmConfig =
            serde_json::from_slice(&bytes).map_err(|e| Error::InvalidOption {
                option: "vm.restore source_url",
                value: path.display().to_string(),
                reason: e.to_string(),
            })?;
        crate::net_config::replace_fds(&mut given, net_fds, "vm.restore")?;
        let config = config::from_api(&given, &self.options)?;
        self.given = Some(config::with_defaults(&given));
        self.config = Some(config);
        self.stats.clear();
        self.build(BuildFrom::Snapshot(dir))
    }

    /// A full in-image snapshot of the running or paused VM; a running VM
    /// is paused for it and resumed after.
    fn snapshot_in_image(&mut self, name: &str) -> Response {
        let (state, vm) = match (self.state, &self.vm) {
            (state @ (VmState::Running | VmState::Paused), Some(vm)) => (state, vm),
            (state, _) => return state_error("snapshot", state),
        };
        let started = std::time::Instant::now();
        if state == VmState::Running {
            if let Err(e) = vm.pause() {
                return error_response(500, &e);
            }
        }
        let paused = started.elapsed();
        let taken = crate::state::in_image::take(vm, name);
        let resuming = std::time::Instant::now();
        if state == VmState::Running {
            vm.resume();
        }
        match taken {
            Ok(taken) => {
                crate::state::in_image::read_ahead(vm, name);
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                eprintln!(
                    "vmm: snapshot: pause {:.1} ms, {}, resume {:.1} ms ({} MiB of RAM, \
                     {} MiB of state); {:.1} ms in all",
                    ms(paused),
                    taken.phases,
                    ms(resuming.elapsed()),
                    taken.ram_saved >> 20,
                    taken.vm_state_size >> 20,
                    ms(started.elapsed())
                );
                Response::no_content()
            }
            Err(e) => error_response(500, &e),
        }
    }

    /// Reverts the VM to in-image snapshot `name`: the state is read and
    /// checked first (a refusal changes nothing), then the state is set
    /// into the paused VM ([`Vm::revert_in_place`]) or, for a VM that
    /// cannot keep itself (a revert failed half-way), the VM
    /// is stopped, its disks reverted and the VM built from the state,
    /// paused.
    fn revert_in_image(&mut self, name: &str) -> Result<()> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| Error::GuestFault("no VM configuration".into()))?;
        let summary = crate::state::machine::ConfigSummary {
            cpus: config.cpus,
            memory: config.memory,
            disks: config.disks.len() as u32,
            nets: config.net.len() as u32,
        };
        // The VM itself is kept when it can be: the state is set into it
        // (checked first, as below).
        if let Some(vm) = self.vm.as_mut().filter(|vm| vm.can_revert_in_place()) {
            let started = std::time::Instant::now();
            let faults_before = crate::sys::fault_counts();
            // The threads the pause waits on get a core at once, as the
            // controller does (the API thread raised it): on a busy host
            // a vCPU thread waiting for a CPU made the whole pause (24
            // and 80 ms in two traced reverts). The vCPUs are put back
            // while paused (the resumed guest runs as before), the device
            // thread when `free_due` passes.
            let vcpus = crate::thread_boost::raise_named(&["vcpu"]);
            let devices = crate::thread_boost::raise_named(&[crate::vm::DEVICE_THREAD]);
            let reverted = vm.revert_in_place(name);
            crate::thread_boost::put_back_all(vcpus);
            self.raised_until_due.extend(devices);
            match reverted {
                Ok(phases) => {
                    let _ = self.reset.read();
                    self.state = VmState::Paused;
                    // Logged once the answer is on its way: the line is
                    // not written before the guest runs.
                    // Whether the revert's code or data had to be read
                    // from storage (the process's faults, all threads).
                    let (major, minor, blocks) = crate::sys::fault_counts();
                    self.log_after_answer.push(format!(
                        "vmm: revert in place: {phases}; {:.1} ms in all; \
                         {} major faults, {} minor, {} KiB read",
                        started.elapsed().as_secs_f64() * 1000.0,
                        major - faults_before.0,
                        minor - faults_before.1,
                        (blocks - faults_before.2) / 2
                    ));
                    return Ok(());
                }
                Err(crate::vm::InPlaceError::Unchanged(e)) => {
                    if self.state == VmState::Running {
                        vm.resume();
                    }
                    return Err(e);
                }
                // Half reverted: the VM is rebuilt from the snapshot.
                Err(crate::vm::InPlaceError::Partial(e)) => {
                    eprintln!("vmm: the in-place revert failed ({e}); rebuilding the VM");
                }
            }
        }
        if let Some(vm) = &self.vm {
            let (disks, backends) = vm.disks();
            crate::state::in_image::check_revert(backends, disks, name, summary)?;
        }
        // The new VM loads the state into the old one's RAM.
        let reuse = self.vm.as_ref().map(|vm| vm.memory().clone());
        // As stop_vm, but the old VM's teardown overlaps the new build;
        // unless it has interfaces: its taps must be closed before the
        // new VM opens them (a tap takes one queue fd at a time).
        if let Some(vm) = self.vm.take() {
            let stopped = if vm.nets().is_empty() {
                vm.stop_dropping_behind()
            } else {
                vm.stop()
            };
            match stopped {
                Ok(times) => self.times = Some(times),
                Err(e) => eprintln!("vmm: {e}"),
            }
        }
        let _ = self.reset.read();
        self.state = VmState::Shutdown;
        self.build(BuildFrom::Image(name, reuse.as_ref()))
    }

    /// Builds the created VM from the state of another image's full
    /// snapshot (a fork), paused, with its own interfaces' MACs.
    fn restore_fork(&mut self, source: &crate::state::fork::ForkSource) -> Result<()> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| Error::GuestFault("no VM configuration".into()))?;
        let summary = crate::state::machine::ConfigSummary {
            cpus: config.cpus,
            memory: config.memory,
            disks: config.disks.len() as u32,
            nets: config.net.len() as u32,
        };
        let macs: Vec<[u8; 6]> = config.net.iter().map(|n| n.mac.0).collect();
        let (mut machine, mem, lazy) = crate::state::fork::read(source, summary, config.seccomp)?;
        crate::state::fork::set_macs(&mut machine, &macs);
        let shell = crate::kvm_shell::KvmShell::create(config.cpus, mem)?;
        self.build(BuildFrom::Migration(Box::new(machine), shell))?;
        // A fork is a new generation of the guest (a migration is not).
        if let Some(vm) = &mut self.vm {
            vm.set_lazy_ram(lazy);
            vm.new_generation()?;
        }
        Ok(())
    }

    /// Deletes in-image snapshot `name` from the running or paused VM's
    /// disks (a VM not built holds no disk: its images are edited
    /// directly).
    fn delete_in_image(&mut self, name: &str) -> Response {
        match (self.state, &self.vm) {
            (state @ (VmState::Running | VmState::Paused), Some(vm)) => {
                // The disks' queues stay idle while the tables change.
                if state == VmState::Running {
                    if let Err(e) = vm.pause() {
                        return error_response(500, &e);
                    }
                }
                let deleted = crate::state::in_image::delete(vm, name);
                if state == VmState::Running {
                    vm.resume();
                }
                match deleted {
                    Ok(_) => Response::no_content(),
                    Err(e) => error_response(500, &e),
                }
            }
            (state, _) => state_error("delete a snapshot of", state),
        }
    }

    /// Sends the VM to the destination `request` names; on success the
    /// VM is gone from here and `vmm` ends once the answer is written.
    fn send_migration(
        &mut self,
        request: &crate::migration::api::SendRequest,
    ) -> std::result::Result<(), crate::migration::MigrationError> {
        let given = self.given.clone().expect("a VM state implies a config");
        let config_json = serde_json::to_vec(&given)
            .map_err(|e| crate::migration::MigrationError::Stream(e.to_string()))?;
        let vm = self.vm.as_mut().expect("a running or paused VM is built");
        let options = request.options(self.state == VmState::Running);
        // Answered at once; the destination's Resumed, which ends the
        // downtime's measure, is heard after the answer (`serve_api`).
        self.committed = Some(crate::migration::send::send(vm, &config_json, &options)?);
        self.migrated = true;
        Ok(())
    }

    /// Adds interface `net` to the VM's configuration (not built: the
    /// next boot has it), checked as vm.create checks its interfaces.
    fn add_net(&mut self, net: &vmapi::NetConfig) -> Result<()> {
        let (Some(given), Some(config)) = (self.given.as_mut(), self.config.as_mut()) else {
            return Err(Error::GuestFault("no VM configuration".into()));
        };
        let added = crate::net_config::from_api(net, config.net.len(), false)?;
        let mut nets = config.net.clone();
        nets.push(added.clone());
        let disk_ids: Vec<&str> = config.disks.iter().map(|d| d.id.as_str()).collect();
        crate::net_config::check_ids(&nets, &disk_ids)?;
        config::check_devices(config.disks.len(), nets.len())?;
        config.net = nets;
        given
            .net
            .get_or_insert_with(Vec::new)
            .push(crate::net_config::to_api(&added));
        Ok(())
    }

    /// Waits for one incoming migration and runs its VM here.
    fn receive_migration(
        &mut self,
        request: &crate::migration::api::ReceiveRequest,
    ) -> std::result::Result<String, crate::migration::MigrationError> {
        use crate::migration::MigrationError;
        let (mut incoming, opening) = request.accept()?;
        let crate::migration::receive::Opening {
            config: given,
            annotation,
            storage: plan,
        } = opening;
        let mut storage = None;
        let received = (|| {
            let annotation = String::from_utf8(annotation)
                .map_err(|_| MigrationError::Stream("the annotation is not UTF-8".into()))?;
            let mut given: vmapi::VmConfig = serde_json::from_slice(&given)
                .map_err(|e| MigrationError::Stream(format!("the VM configuration: {e}")))?;
            if let Some(serial) = &request.serial {
                given.serial = Some(serial.clone());
            }
            crate::net_config::replace_fds(&mut given, &request.net_fds, "vm.receive-migration")?;
            let config = config::from_api(&given, &self.options)?;
            let plan = crate::migration::storage::StoragePlan::parse(&plan, config.disks.len())?;
            storage =
                crate::migration::storage_receive::IncomingStorage::create(&plan, &config.disks)?;
            // The KVM VM is made now, while the RAM arrives, not in the
            // paused window (a failure to make it refuses before any RAM).
            let shell = crate::kvm_shell::KvmShell::create(
                config.cpus,
                crate::vm::map_guest_memory(config.memory)?,
            )?;
            let summary = crate::state::machine::ConfigSummary {
                cpus: config.cpus,
                memory: config.memory,
                disks: config.disks.len() as u32,
                nets: config.net.len() as u32,
            };
            incoming.ack()?;
            let received = incoming.receive_state(summary, shell.memory(), storage.as_mut())?;
            if let Some(storage) = storage.as_mut() {
                storage.close()?;
            }
            Ok::<_, MigrationError>((given, config, shell, received, annotation))
        })();
        let (given, config, shell, received, annotation) = match received {
            Ok(r) => r,
            Err(e) => {
                incoming.refuse(&e.to_string());
                return Err(e);
            }
        };
        self.given = Some(config::with_defaults(&given));
        self.config = Some(config);
        self.stats.clear();
        let mut log = crate::migration::receive::SwitchLog::start(&received);
        if let Err(e) = self.build(BuildFrom::Migration(Box::new(received.machine), shell)) {
            incoming.refuse(&e.to_string());
            return Err(e.into());
        }
        log.lap("build");
        if let Some(vm) = &self.vm {
            log.build_detail(vm.build_times().to_string());
        }
        if let Err(e) = incoming.ready_and_commit() {
            // The source may run on with the disks: leave them untouched.
            if let Some(vm) = self.vm.take() {
                vm.abandon();
            }
            return Err(e);
        }
        log.lap("ready to commit");
        if let Some(storage) = storage {
            storage.keep();
        }
        if received.resume {
            if let Some(vm) = &self.vm {
                vm.resume();
                self.state = VmState::Running;
            }
        }
        log.lap("resume");
        // For the source's measure of the downtime (it ends at this
        // resume); the guest is here whether or not the source hears it.
        incoming.resumed();
        log.lap("resumed sent");
        log.print();
        Ok(annotation)
    }

    /// Builds and starts the configured VM.
    fn boot(&mut self, paused: bool) -> Result<()> {
        self.build(BuildFrom::Boot { paused })
    }

    fn build(&mut self, from: BuildFrom<'_>) -> Result<()> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| Error::GuestFault("no VM configuration".into()))?;
        self.exit.clear();
        let serial_out = match &config.serial {
            SerialSpec::Socket { socket, log } => {
                let hub = match &self.console {
                    Some(hub) => hub.clone(),
                    None => {
                        let hub = ConsoleHub::start(socket, log.as_deref(), config.seccomp)?;
                        self.console = Some(hub.clone());
                        hub
                    }
                };
                hub.writer()
            }
            other => crate::serial_sink::plain_writer(other)?,
        };
        let hooks = VmHooks {
            exit: self.exit.clone(),
            reset: self.reset.try_clone().map_err(|source| Error::Io {
                what: "eventfd".into(),
                source,
            })?,
            serial_out,
            started: self.started,
        };
        let (vm, paused) = match from {
            BuildFrom::Boot { paused } => (Vm::build(&config, hooks, paused)?, paused),
            BuildFrom::Snapshot(dir) => (Vm::restore(&config, hooks, dir)?, true),
            BuildFrom::Image(name, reuse) => {
                (Vm::restore_from_image(&config, hooks, name, reuse)?, true)
            }
            BuildFrom::Migration(machine, shell) => {
                (Vm::from_migration(&config, hooks, *machine, shell)?, true)
            }
        };
        if let Some(hub) = &self.console {
            hub.attach_serial(vm.serial());
        }
        self.stats = vm.stats().to_vec();
        self.vm = Some(vm);
        self.state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        Ok(())
    }

    /// Stops the VM in place and boots it again.
    fn reboot(&mut self) -> Result<()> {
        self.stop_vm();
        self.state = VmState::Shutdown;
        self.boot(false)
    }

    /// Stops the VM, if built, closing its disks.
    fn stop_vm(&mut self) {
        if self.migrated {
            // The destination owns the disks now: no flush, no clean mark.
            if let Some(vm) = self.vm.take() {
                vm.abandon();
            }
            return;
        }
        if let Some(vm) = self.vm.take() {
            match vm.stop() {
                Ok(times) => self.times = Some(times),
                Err(e) => eprintln!("vmm: {e}"),
            }
        }
        let _ = self.reset.read();
    }

    fn counters(&self) -> vmapi::VmCounters {
        let mut counters = BTreeMap::new();
        let ids: Vec<String> = self
            .config
            .iter()
            .flat_map(|c| c.disks.iter().map(|d| d.id.clone()))
            .collect();
        for id in ids {
            let stats = self.stats.iter().find(|(sid, _)| *sid == id);
            let disk = stats.map_or_else(vmapi::DiskCounters::default, |(_, s)| disk_counters(s));
            counters.insert(id, disk.to_map());
        }
        for net in self.config.iter().flat_map(|c| c.net.iter()) {
            let live = self
                .vm
                .iter()
                .flat_map(|vm| vm.nets())
                .find(|n| n.id == net.id);
            let map = live.map_or_else(
                || crate::devices::net::counters_map(&Default::default()),
                |n| crate::devices::net::counters_map(&n.counters),
            );
            counters.insert(net.id.clone(), map);
        }
        counters
    }

    fn remove_sockets(&mut self) {
        if let Some(api) = &self.api {
            let _ = std::fs::remove_file(&api.socket);
        }
        if let Some(console) = self.console.take() {
            let _ = std::fs::remove_file(console.socket());
        }
    }
}

/// Where a VM comes from.
enum BuildFrom<'a> {
    /// Its kernel, booted.
    Boot {
        /// Leave the vCPUs parked.
        paused: bool,
    },
    /// A snapshot's directory (always paused, as CH restores).
    Snapshot(&'a std::path::Path),
    /// A full internal snapshot of the disks (paused, as loadvm leaves a
    /// VM that was not running), loaded into the RAM of the VM it
    /// replaces if there was one.
    Image(&'a str, Option<&'a vm_memory::GuestMemoryMmap>),
    /// A state, and the KVM VM holding its RAM: a migration's (paused
    /// until the source commits) or a fork's (`state::fork`).
    Migration(
        Box<crate::state::machine::MachineState>,
        crate::kvm_shell::KvmShell,
    ),
}

fn disk_counters(stats: &DiskStats) -> vmapi::DiskCounters {
    let read = stats.get(StatKind::Read);
    let write = stats.get(StatKind::Write);
    let flush = stats.get(StatKind::Flush);
    vmapi::DiskCounters {
        read_bytes: read.bytes,
        write_bytes: write.bytes,
        read_ops: read.ops,
        write_ops: write.ops,
        read_latency_min: read.min_us,
        read_latency_max: read.max_us,
        read_latency_avg: read.avg_us(),
        write_latency_min: write.min_us,
        write_latency_max: write.max_us,
        write_latency_avg: write.avg_us(),
        flush_ops: flush.ops,
        read_time_ns: read.time_ns,
        write_time_ns: write.time_ns,
        flush_time_ns: flush.time_ns,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::ok_json(body),
        Err(e) => error_response(500, &e),
    }
}
