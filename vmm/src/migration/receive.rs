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

use vm_memory::GuestMemoryMmap;

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
    /// and the switch.
    pub fn receive_state(
        &mut self,
        vm: ConfigSummary,
        mem: &GuestMemoryMmap,
        storage: Option<&mut IncomingStorage>,
    ) -> Result<Received> {
        receive_state(&mut self.input, &mut self.offset, vm, mem, storage)
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
