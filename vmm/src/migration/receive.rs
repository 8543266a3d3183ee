//! The destination of a migration. Everything read is untrusted: the
//! stream's header and every frame are checked ([`super::stream`]), the
//! configuration goes through the same checks as vm.create's, every RAM
//! run must lie in the VM's RAM, and the machine's state must match the
//! configuration. The KVM VM is made (`crate::kvm_shell`) as soon as the
//! configuration is accepted, and RAM is received into its memory; the
//! disks are opened and locked, the devices wired and the state set only
//! at the switch, once the source has let go of the disks. The guest runs
//! only after the source's Commit. A failure drops what was made, so
//! nothing is left behind.

use std::io::{BufReader, BufWriter, Read, Write};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::sched::RealtimeBoost;
use super::storage_receive::IncomingStorage;
use super::stream::{self, Frame, Tag};
use super::transport::Connection;
use super::{MigrationError, Result};
use crate::state::machine::{ConfigSummary, MachineState};

/// An incoming migration, from its configuration on.
pub struct Incoming {
    input: BufReader<Connection>,
    output: Connection,
    offset: u64,
    /// The calling thread in the real-time class from the switch read to
    /// the Resumed sent (the guest is paused at both ends meanwhile);
    /// put back when the migration is dropped, after the Resumed.
    boost: RealtimeBoost,
}

/// What the source says first, not yet checked.
pub struct Opening {
    /// The VmConfig as JSON.
    pub config: Vec<u8>,
    /// Text for this host's manager (passed on, never interpreted here).
    pub annotation: Vec<u8>,
    /// The storage plan as JSON.
    pub storage: Vec<u8>,
}

/// What arrives before the switch.
pub struct Received {
    /// The machine's state, checked against the configuration.
    pub machine: MachineState,
    /// Whether the guest is to run here once the source commits.
    pub resume: bool,
    /// Bytes of RAM received.
    pub ram_bytes: u64,
    /// When the machine's state was read.
    pub machine_at: Instant,
    /// When the switch was read (the source paused, its state sent, its
    /// disks flushed and their locks let go of).
    pub switch_at: Instant,
}

/// The environment variable that makes a migration's destination print
/// where the switch's time went, one line on stderr (the source always
/// prints its own).
pub const PHASES: &str = "VMM_MIGRATION_PHASES";

/// The destination's side of the switch, step by step (each from the end
/// of the last; the first from the switch read), printed on stderr when
/// [`PHASES`] is set.
pub struct SwitchLog {
    switch_at: Instant,
    mark: Instant,
    /// From the machine's state read to the switch read: the source's
    /// flush and lock release, and the way here.
    state_to_switch: Duration,
    steps: Vec<(&'static str, Duration)>,
    build: String,
}

impl SwitchLog {
    /// Starts the log at `received`'s switch.
    pub fn start(received: &Received) -> SwitchLog {
        SwitchLog {
            switch_at: received.switch_at,
            mark: received.switch_at,
            state_to_switch: received.switch_at - received.machine_at,
            steps: Vec::new(),
            build: String::new(),
        }
    }

    /// Ends step `what` now.
    pub fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.steps.push((what, now - self.mark));
        self.mark = now;
    }

    /// Where the VM's build went (shown after the `build` step).
    pub fn build_detail(&mut self, detail: String) {
        self.build = detail;
    }

    /// Prints the log when [`PHASES`] is set.
    pub fn print(&self) {
        if std::env::var_os(PHASES).is_none() {
            return;
        }
        eprintln!("vmm: {self}");
    }
}

impl std::fmt::Display for SwitchLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "the migration's switch here: state read {:.1} ms before the switch",
            ms(self.state_to_switch)
        )?;
        for (what, took) in &self.steps {
            write!(f, ", {what} {:.1} ms", ms(*took))?;
            if *what == "build" && !self.build.is_empty() {
                write!(f, " ({})", self.build)?;
            }
        }
        write!(
            f,
            "; {:.1} ms from the switch read to the last step",
            ms(self.mark - self.switch_at)
        )
    }
}

impl Incoming {
    /// Reads the header, the configuration frame, the annotation and the
    /// storage plan from `connection`; returns the configuration's JSON
    /// bytes and the plan's (not yet trusted) and the annotation (passed
    /// on, never interpreted here).
    pub fn start(connection: Connection) -> Result<(Incoming, Opening)> {
        let output = connection
            .try_clone()
            .map_err(MigrationError::io("cloning the connection"))?;
        let mut incoming = Incoming {
            input: BufReader::with_capacity(1 << 20, connection),
            output,
            offset: 12,
            boost: RealtimeBoost::new(),
        };
        stream::read_header(&mut incoming.input)?;
        let frame = incoming.next()?;
        if frame.tag != Tag::Config {
            return Err(MigrationError::Stream(format!(
                "the stream starts with a {} frame, not Config",
                frame.tag.name()
            )));
        }
        let annotation = incoming.next()?;
        if annotation.tag != Tag::Annotation {
            return Err(MigrationError::Stream(format!(
                "a {} frame where the annotation was due",
                annotation.tag.name()
            )));
        }
        let plan = incoming.next()?;
        if plan.tag != Tag::Storage {
            return Err(MigrationError::Stream(format!(
                "a {} frame where the storage plan was due",
                plan.tag.name()
            )));
        }
        let opening = Opening {
            config: frame.payload,
            annotation: annotation.payload,
            storage: plan.payload,
        };
        Ok((incoming, opening))
    }

    fn next(&mut self) -> Result<Frame> {
        stream::read_frame(&mut self.input, &mut self.offset)
    }

    fn reply(&mut self, tag: Tag, payload: &[u8]) -> Result<()> {
        let mut out = BufWriter::new(&mut self.output);
        stream::write_frame(&mut out, tag, &[payload])
            .and_then(|()| out.flush())
            .map_err(MigrationError::io("answering the source"))
    }

    /// Accepts the configuration.
    pub fn ack(&mut self) -> Result<()> {
        self.reply(Tag::Ack, &[])
    }

    /// Refuses, telling the source why (best effort: it may be gone).
    pub fn refuse(&mut self, reason: &str) {
        let mut reason = reason.replace('\n', " ");
        if reason.len() > stream::MAX_REASON as usize {
            let mut end = stream::MAX_REASON as usize;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let _ = self.reply(Tag::Refused, reason.as_bytes());
        self.output.shutdown();
    }

    /// Receives RAM into `mem` (zeroed, of a VM configured as `vm`) and
    /// disk data into `storage` (when copied), then the machine's state
    /// and the switch. From the switch on, until the Resumed is sent, the
    /// calling thread runs in the real-time class
    /// ([`super::sched::RealtimeBoost`]): the guest is paused on both
    /// hosts, and a busy host's time-shared threads would delay it.
    pub fn receive_state(
        &mut self,
        vm: ConfigSummary,
        mem: &GuestMemoryMmap,
        storage: Option<&mut IncomingStorage>,
    ) -> Result<Received> {
        let received = receive_state(&mut self.input, &mut self.offset, vm, mem, storage)?;
        self.boost.raise(super::sched::this_thread());
        Ok(received)
    }

    /// Says the VM is built and waits for the source's Commit.
    pub fn ready_and_commit(&mut self) -> Result<()> {
        self.reply(Tag::Ready, &[])?;
        // Fault injection for the tests: a destination killed -9 once it
        // said Ready must leave copied images that are whole and clean.
        if std::env::var_os(KILL_AFTER_READY).is_some() {
            crate::sys::kill_self();
        }
        let frame = self.next()?;
        match frame.tag {
            Tag::Commit => Ok(()),
            Tag::Cancel => Err(MigrationError::Refused(format!(
                "the source cancelled: {}",
                stream::reason_of(&frame)
            ))),
            other => Err(MigrationError::Stream(format!(
                "a {} frame where Commit was due",
                other.name()
            ))),
        }
    }

    /// Tells the source the guest runs here now (best effort: the source
    /// has committed and only measures the downtime with it).
    pub fn resumed(&mut self) {
        let _ = self.reply(Tag::Resumed, &[]);
    }
}

/// The environment variable that makes a destination kill itself with
/// SIGKILL right after it says Ready (a test's fault injection).
pub const KILL_AFTER_READY: &str = "VMM_TEST_KILL_AFTER_READY";

/// Reads frames from `input` until the switch: RAM runs applied to `mem`
/// and disk chunks to `storage` (refused without one), then one machine
/// state checked against `vm`, then the switch. The stream reader the
/// fuzz target drives.
pub fn receive_state<R: Read>(
    input: &mut R,
    offset: &mut u64,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
    mut storage: Option<&mut IncomingStorage>,
) -> Result<Received> {
    let mut machine = None;
    let mut machine_at = Instant::now();
    let mut ram_bytes = 0u64;
    loop {
        let frame = stream::read_frame(input, offset)?;
        match (frame.tag, &machine) {
            (Tag::Ram, None) => ram_bytes += stream::apply_ram(&frame, vm.memory, mem)?,
            (Tag::Disk, None) if storage.is_some() => {
                if let Some(storage) = storage.as_deref_mut() {
                    storage.apply(&frame.payload)?;
                }
            }
            (Tag::Machine, None) => {
                machine_at = Instant::now();
                machine = Some(MachineState::parse(&frame.payload, vm)?);
            }
            (Tag::Switch, Some(_)) => {
                let resume = match frame.payload[..] {
                    [0] => false,
                    [1] => true,
                    _ => {
                        return Err(MigrationError::Stream(
                            "a Switch frame whose flag is not 0 or 1".into(),
                        ))
                    }
                };
                return Ok(Received {
                    machine: machine.expect("matched Some"),
                    resume,
                    ram_bytes,
                    machine_at,
                    switch_at: Instant::now(),
                });
            }
            (Tag::Cancel, _) => {
                return Err(MigrationError::Refused(format!(
                    "the source cancelled: {}",
                    stream::reason_of(&frame)
                )))
            }
            (tag, _) => {
                return Err(MigrationError::Stream(format!(
                    "a {} frame out of place at byte {}",
                    tag.name(),
                    *offset
                )))
            }
        }
    }
}
