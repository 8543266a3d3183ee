//! The commands, one module per family: definitions ([`define`]), what a
//! domain is and has ([`monitor`]), starting and stopping ([`lifecycle`]),
//! statistics ([`stats`]), the serial console ([`console`]), snapshots
//! ([`snapshot`]), live migration ([`migrate`]), clones ([`clone`]) and forks
//! from a snapshot ([`fork`]).

pub mod clone;
pub mod console;
pub mod define;
pub mod fork;
pub mod iface;
pub mod lifecycle;
pub mod migrate;
pub mod monitor;
pub mod net;
pub mod snapshot;
pub mod stats;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use super::cli::Invocation;
use super::error::VmError;
use super::runtime::{self, procfs, RunFolder};
use super::store::Store;
use super::xml::{DomainDef, DomainName, Uuid};

/// What every command works with.
#[derive(Debug)]
pub struct Ctx {
    /// The store.
    pub store: Store,
    /// `-q`.
    pub quiet: bool,
}

impl Ctx {
    /// Appends one of virsh's informational messages (`Domain 'x'
    /// started`, ...), which `-q` silences as virsh's vshPrintExtra.
    pub fn extra(&self, out: &mut String, text: &str) {
        if !self.quiet {
            out.push_str(text);
        }
    }
}

/// Runs one command, appending what it prints to `out`.
pub fn run(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    match inv.name() {
        "define" => define::define(ctx, inv, out),
        "undefine" => define::undefine(ctx, inv, out),
        "dumpxml" => define::dumpxml(ctx, inv, out),
        "start" => lifecycle::start(ctx, inv, out),
        "shutdown" => lifecycle::shutdown(ctx, inv, out),
        "destroy" => lifecycle::destroy(ctx, inv, out),
        "reboot" => lifecycle::reboot(ctx, inv, out),
        "reset" => lifecycle::reset(ctx, inv, out),
        "suspend" => lifecycle::suspend(ctx, inv, out),
        "resume" => lifecycle::resume(ctx, inv, out),
        "list" => monitor::list(ctx, inv, out),
        "dominfo" => monitor::dominfo(ctx, inv, out),
        "domstate" => monitor::domstate(ctx, inv, out),
        "domid" => monitor::domid(ctx, inv, out),
        "domname" => monitor::domname(ctx, inv, out),
        "domuuid" => monitor::domuuid(ctx, inv, out),
        "domblklist" => monitor::domblklist(ctx, inv, out),
        "domblkinfo" => monitor::domblkinfo(ctx, inv, out),
        "vcpucount" => monitor::vcpucount(ctx, inv, out),
        "nodeinfo" => monitor::nodeinfo(ctx, inv, out),
        "domstats" => stats::domstats(ctx, inv, out),
        "domblkstat" => stats::domblkstat(ctx, inv, out),
        "vcpuinfo" => stats::vcpuinfo(ctx, inv, out),
        "dommemstat" => stats::dommemstat(ctx, inv, out),
        "console" => console::console(ctx, inv, out),
        "snapshot-create-as" => snapshot::create_as(ctx, inv, out),
        "snapshot-list" => snapshot::list(ctx, inv, out),
        "snapshot-info" => snapshot::info(ctx, inv, out),
        "snapshot-current" => snapshot::current(ctx, inv, out),
        "snapshot-revert" => snapshot::revert(ctx, inv, out),
        "snapshot-delete" => snapshot::delete(ctx, inv, out),
        "clone" => clone::clone(ctx, inv, out),
        "migrate" => migrate::migrate(ctx, inv, out),
        "migrate-listen" => migrate::migrate_listen(ctx, inv, out),
        "domiflist" => net::domiflist(ctx, inv, out),
        "attach-interface" => iface::attach_interface(ctx, inv, out),
        "detach-interface" => iface::detach_interface(ctx, inv, out),
        "domifstat" => net::domifstat(ctx, inv, out),
        "install" => crate::vm::install::install(ctx, inv, out),
        "setvcpus" => crate::vm::resources::commands::setvcpus(ctx, inv, out),
        "setmem" => crate::vm::resources::commands::setmem(ctx, inv, out),
        "setmaxmem" => crate::vm::resources::commands::setmaxmem(ctx, inv, out),
        "vcpupin" => crate::vm::resources::tune_commands::vcpupin(ctx, inv, out),
        "emulatorpin" => crate::vm::resources::tune_commands::emulatorpin(ctx, inv, out),
        "schedinfo" => crate::vm::resources::tune_commands::schedinfo(ctx, inv, out),
        "memtune" => crate::vm::resources::tune_commands::memtune_command(ctx, inv, out),
        other => Err(VmError::Internal(format!(
            "command '{other}' has no handler"
        ))),
    }
}

/// The id of `def` if its VMM runs (no API call).
pub fn active_id(store: &Store, def: &DomainDef) -> Option<u32> {
    let run = RunFolder::new(store.run_dir(&def.name));
    let process = run.process()?;
    if !procfs::alive(process) {
        return None;
    }
    std::fs::read_to_string(run.dir().join("id"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Finds a domain by id, uuid or name, in virsh's order.
pub fn lookup(ctx: &Ctx, key: &str) -> Result<DomainDef, VmError> {
    lookup_by(ctx, key, By::ALL)
}

/// Which keys a lookup accepts (virsh's VIRSH_BYID, BYUUID, BYNAME).
#[derive(Debug, Clone, Copy)]
pub struct By {
    /// A running domain's id.
    pub id: bool,
    /// The uuid.
    pub uuid: bool,
    /// The name.
    pub name: bool,
}

impl By {
    /// Any of the three.
    pub const ALL: By = By {
        id: true,
        uuid: true,
        name: true,
    };
}

/// Finds a domain by the keys `by` allows, in virsh's order. A transient
/// domain whose VMM has ended is gone (and its leftovers are cleaned).
pub fn lookup_by(ctx: &Ctx, key: &str, by: By) -> Result<DomainDef, VmError> {
    let def = lookup_any(ctx, key, by)?;
    if !ctx.store.is_persistent(&def.name) && active_id(&ctx.store, &def).is_none() {
        runtime::inspect(&ctx.store, &def.name, runtime::QUERY_TIMEOUT, None);
        return Err(VmError::NoDomain(key.to_string()));
    }
    Ok(def)
}

fn lookup_any(ctx: &Ctx, key: &str, by: By) -> Result<DomainDef, VmError> {
    let numeric = key.parse::<u32>().is_ok();
    let uuid_like = Uuid::parse(key).is_ok();
    if by.name && !(by.id && numeric) && !(by.uuid && uuid_like) {
        // A plain name: read its one file, not the whole store.
        let name = DomainName::new(key).map_err(|_| VmError::NoDomain(key.to_string()))?;
        return ctx
            .store
            .read_definition(&name)?
            .ok_or_else(|| VmError::NoDomain(key.to_string()));
    }
    let defs = ctx.store.definitions()?;
    if by.id {
        if let Ok(id) = key.parse::<u32>() {
            if let Some(def) = defs.iter().find(|d| active_id(&ctx.store, d) == Some(id)) {
                return Ok(def.clone());
            }
        }
    }
    if by.uuid {
        if let Ok(uuid) = Uuid::parse(key) {
            if let Some(def) = defs.iter().find(|d| d.uuid == uuid) {
                return Ok(def.clone());
            }
        }
    }
    defs.into_iter()
        .find(|d| by.name && d.name.as_str() == key)
        .ok_or_else(|| VmError::NoDomain(key.to_string()))
}

/// A disk image's sizes as libvirt's domblkinfo reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSizes {
    /// What the guest sees (the qcow2 header's size, or the file's).
    pub capacity: u64,
    /// Bytes the host allocated to the file.
    pub allocation: u64,
    /// The file's size.
    pub physical: u64,
}

/// Reads `path`'s sizes (a qcow2 image's virtual size from its header).
pub fn disk_sizes(path: &str) -> std::io::Result<DiskSizes> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let physical = if meta.file_type().is_file() {
        meta.len()
    } else {
        // A block device: its size is where its end is.
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))?
    };
    let mut header = [0u8; 32];
    let mut capacity = physical;
    if file.read_exact(&mut header).is_ok() && header[..4] == *b"QFI\xfb" {
        capacity = u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"));
    }
    Ok(DiskSizes {
        capacity,
        allocation: meta.blocks() * 512,
        physical,
    })
}
