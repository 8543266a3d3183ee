//! Starting and stopping: `start [--console] [--paused]`, `shutdown`,
//! `destroy`, `reboot`, `reset`, `suspend` and `resume`. Each takes the
//! domain's lock, so two of them on one domain run one after the other
//! (two racing `start`s start one VMM; the second finds it active).

use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmapi::{
    Client, ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig,
    PayloadConfig, VmConfig, VmState,
};

use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::format::{reason, state};
use crate::vm::runtime::{self, procfs, Active, RunFolder, Status, QUERY_TIMEOUT};
use crate::vm::store::DomainLock;
use crate::vm::xml::{CacheMode, DiskFormat, DomainDef};

/// How long `start` waits for a new VMM's API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// How long a lifecycle call to a VMM may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `destroy` lets a VMM stop cleanly on SIGTERM before SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(2);
/// How long `destroy` waits for a VMM to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Devices that only change the host side: ignored with a warning.
const HOST_SIDE_DEVICES: [&str; 5] = ["graphics", "sound", "video", "input", "memballoon"];

/// The VMM binary: next to `vm`'s own executable, else `$VM_VMM`, else
/// `vmm` on the PATH.
pub fn vmm_binary() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        let beside = dir.join("vmm");
        if beside.is_file() {
            return beside;
        }
    }
    std::env::var_os("VM_VMM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

/// The `type` attribute of a device given as text.
fn type_attribute(text: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(text).ok()?;
    doc.root_element().attribute("type").map(String::from)
}

/// Turns a definition into the VMM's VmConfig, refusing (one line naming
/// the element) what would change what the guest sees and we lack, and
/// warning once for each host-side device we ignore.
pub fn vm_config(def: &DomainDef, run: &RunFolder) -> Result<VmConfig, VmError> {
    let kernel = def.os.kernel.as_ref().ok_or_else(|| {
        VmError::Unsupported("no <kernel> in <os>: only direct kernel boot is supported".into())
    })?;
    for path in std::iter::once(kernel).chain(def.os.initrd.as_ref()) {
        if let Err(e) = std::fs::metadata(path) {
            return Err(VmError::Refused(format!(
                "Cannot access storage file '{path}': {}",
                super::define::os_reason(&e)
            )));
        }
    }
    if let Some(host) = procfs::host_memory_kib() {
        if def.memory_kib > host {
            return Err(VmError::Unsupported(format!(
                "<memory> of {} KiB is over the host's {host} KiB",
                def.memory_kib
            )));
        }
    }
    for (element, text) in def.other_devices() {
        match element {
            "serial" | "console" | "emulator" | "interface" => {}
            e if HOST_SIDE_DEVICES.contains(&e) => {
                eprintln!("warning: ignoring <{e}>: host-side device, not given to the guest");
            }
            "controller" => {
                let kind = type_attribute(text).unwrap_or_default();
                if kind == "usb" || kind == "pci" {
                    eprintln!(
                        "warning: ignoring <controller type='{kind}'>: not given to the guest"
                    );
                } else {
                    return Err(VmError::Unsupported(format!(
                        "<controller type='{kind}'> is not supported by this VMM"
                    )));
                }
            }
            other => {
                return Err(VmError::Unsupported(format!(
                    "<{other}> is not supported by this VMM"
                )))
            }
        }
    }
    let mut disks = Vec::with_capacity(def.disks.len());
    for disk in &def.disks {
        let dev = &disk.target_dev;
        if disk.disk_type != "file" && disk.disk_type != "block" {
            return Err(VmError::Unsupported(format!(
                "<disk type='{}'> ('{dev}'): only file and block disks are supported",
                disk.disk_type
            )));
        }
        if disk.device != "disk" && disk.device != "cdrom" {
            return Err(VmError::Unsupported(format!(
                "<disk device='{}'> ('{dev}'): only disk and cdrom are supported",
                disk.device
            )));
        }
        if let Some(bus) = disk.target_bus.as_deref().filter(|b| *b != "virtio") {
            return Err(VmError::Unsupported(format!(
                "<disk> '{dev}' on bus '{bus}': only virtio disks are supported"
            )));
        }
        let image_type = match &disk.format {
            None => None,
            Some(DiskFormat::Qcow2) => Some(ImageType::Qcow2),
            Some(DiskFormat::Raw) => Some(ImageType::Raw),
            Some(DiskFormat::Other(f)) => {
                return Err(VmError::Unsupported(format!(
                    "<driver type='{f}'> of disk '{dev}': only qcow2 and raw are supported"
                )))
            }
        };
        let source = disk
            .source
            .as_ref()
            .ok_or_else(|| VmError::Unsupported(format!("<disk> '{dev}' has no <source>")))?;
        disks.push(DiskConfig {
            path: PathBuf::from(source),
            readonly: disk.is_readonly(),
            direct: disk.cache == Some(CacheMode::None),
            id: Some(dev.clone()),
            image_type,
        });
    }
    Ok(VmConfig {
        cpus: CpusConfig {
            boot_vcpus: def.vcpus_current,
            max_vcpus: def.vcpus,
        },
        memory: MemoryConfig {
            size: def.memory_kib * 1024,
        },
        payload: PayloadConfig {
            firmware: None,
            kernel: Some(PathBuf::from(kernel)),
            cmdline: def.os.cmdline.clone(),
            initramfs: def.os.initrd.as_ref().map(PathBuf::from),
        },
        disks: (!disks.is_empty()).then_some(disks),
        net: Some(super::net::net_configs(def)?).filter(|n| !n.is_empty()),
        serial: Some(ConsoleConfig {
            file: Some(run.console_log()),
            socket: Some(run.console_socket()),
            mode: ConsoleMode::Socket,
        }),
        console: None,
    })
}

/// The last non-empty line of the VMM's log, for a one-line failure.
pub(super) fn log_tail(run: &RunFolder) -> String {
    let text = std::fs::read(run.vmm_log()).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "the VMM ended without a message".to_string())
}

/// Spawns the VMM in its own session with its output in vmm.log.
pub(super) fn spawn_vmm(run: &RunFolder) -> Result<Child, VmError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.vmm_log())
        .map_err(|e| VmError::Internal(format!("cannot open {}: {e}", run.vmm_log().display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| VmError::Internal(format!("cannot open the VMM's log: {e}")))?;
    let binary = vmm_binary();
    let mut command = Command::new(&binary);
    command
        .arg("--api-socket")
        .arg(format!("path={}", run.api_socket().display()));
    // The VMM keeps our code (and its own) in memory while it runs: we run
    // once per command, and a command on a running domain (a revert)
    // should not wait for our code read back from storage.
    if let Ok(own) = std::env::current_exe() {
        command.arg("--keep-resident").arg(own);
    }
    command.stdin(Stdio::null()).stdout(log).stderr(log2);
    crate::vm::sys::detach_session(&mut command);
    command.spawn().map_err(|e| {
        VmError::Refused(format!(
            "Cannot run the VMM '{}': {}",
            binary.display(),
            super::define::os_reason(&e)
        ))
    })
}

/// Waits for the new VMM's socket to accept connections; fails with the VMM's last
/// log line if it ends first.
pub(super) fn wait_for_api(child: &mut Child, run: &RunFolder) -> Result<Client, VmError> {
    let client = Client::new(run.api_socket())
        .with_connect_timeout(Duration::from_secs(1))
        .with_io_timeout(CALL_TIMEOUT);
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(run);
            return Err(VmError::OperationFailed(match status.signal() {
                Some(signal) => format!("the VMM was killed by signal {signal} ({tail})"),
                None => tail,
            }));
        }
        // Listening is enough: vm.create is the first request.
        if std::os::unix::net::UnixStream::connect(run.api_socket()).is_ok() {
            return Ok(client);
        }
        if start.elapsed() > SOCKET_WAIT {
            return Err(VmError::OperationFailed(format!(
                "the VMM's API socket did not answer within {} s",
                SOCKET_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Builds and boots the VM in a new VMM; on failure the VMM is killed and
/// its run folder cleaned.
fn launch(def: &DomainDef, ctx: &Ctx, paused: bool) -> Result<(), VmError> {
    launch_with(def, ctx, &|client: &Client| {
        client.boot(paused)?;
        Ok(if paused {
            (state::PAUSED, reason::PAUSED_USER)
        } else {
            (state::RUNNING, reason::RUNNING_BOOTED)
        })
    })
}

/// Builds the created VM in a new VMM (boots or restores it) and names
/// the (state, reason) it left it in.
pub(super) type StartVm<'a> = &'a dyn Fn(&Client) -> Result<(u32, u32), vmapi::Error>;

/// Starts a VMM with the domain's VmConfig created, then lets `start`
/// build the VM (boot it, or restore it) and name the state and reason
/// it left; on failure the VMM is killed and its run folder cleaned.
pub(super) fn launch_with(def: &DomainDef, ctx: &Ctx, start: StartVm<'_>) -> Result<(), VmError> {
    let run = RunFolder::new(ctx.store.make_run_dir(&def.name)?);
    run.clean();
    let config = vm_config(def, &run)?;
    let resources = crate::vm::resources::apply::Plan::new(def)?;
    let id = ctx.store.next_id()?;
    let mut child = spawn_vmm(&run)?;
    let process = procfs::identify(child.id() as i32);
    let booted = (|| {
        let process = process.ok_or_else(|| VmError::OperationFailed(log_tail(&run)))?;
        run.record(process, id)
            .map_err(|e| VmError::Internal(format!("cannot write the run folder: {e}")))?;
        let client = wait_for_api(&mut child, &run)?;
        let groups = match &resources {
            Some(plan) => plan.place(process.pid, run.dir())?,
            None => None,
        };
        let taps = super::net::open_bridge_taps(def)?;
        super::net::create(&client, &config, &taps).map_err(|e| api_failure(e, &run))?;
        let (s, r) = start(&client).map_err(|e| api_failure(e, &run))?;
        if let Some(plan) = &resources {
            plan.pin_vcpus(process.pid, groups.as_ref())?;
        }
        run.set_reason(s, r);
        Ok(())
    })();
    if booted.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        run.clean();
        let _ = ctx
            .store
            .set_shutoff_reason(&def.name, reason::SHUTOFF_FAILED);
    }
    booted
}

/// An API failure, with the VMM's own last words if it died.
pub(super) fn api_failure(e: vmapi::Error, run: &RunFolder) -> VmError {
    match e {
        vmapi::Error::Status { message, .. } => VmError::OperationFailed(message),
        other => VmError::OperationFailed(format!("{other} ({})", log_tail(run))),
    }
}

/// `start DOMAIN [--console] [--paused]`.
pub fn start(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    let status = runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock));
    if status.active().is_some() {
        return Err(VmError::AlreadyActive);
    }
    launch(&def, ctx, inv.flag("paused")).map_err(|e| e.failed("start", def.name.as_str()))?;
    drop(lock);
    ctx.extra(out, &format!("Domain '{}' started\n", def.name));
    if inv.flag("console") {
        crate::vm::output::flush(out);
        return super::console::attach(&def, ctx, out);
    }
    Ok(())
}

/// The domain, its lock and its running side, or virsh's "not running".
fn running(
    ctx: &Ctx,
    inv: &Invocation,
    action: &'static str,
) -> Result<(DomainDef, DomainLock, Active), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    let lock = ctx.store.lock(&def.name)?;
    match runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, Some(&lock)) {
        Status::Active(active) => Ok((def, lock, *active)),
        Status::Inactive { .. } => Err(VmError::NotRunning.failed(action, def.name.as_str())),
    }
}

/// `shutdown DOMAIN`: the ACPI power button.
pub fn shutdown(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "shutdown")?;
    active
        .client(CALL_TIMEOUT)
        .power_button()
        .map_err(|e| VmError::from(e).failed("shutdown", def.name.as_str()))?;
    ctx.extra(out, &format!("Domain '{}' is being shutdown\n", def.name));
    Ok(())
}

/// `destroy DOMAIN [--graceful]`: SIGTERM, then SIGKILL after a bounded
/// wait, so a hung VMM goes too.
pub fn destroy(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "destroy")?;
    procfs::signal(active.process, libc::SIGTERM);
    if !procfs::wait_gone(active.process, TERM_WAIT) {
        if inv.flag("graceful") {
            return Err(
                VmError::OperationFailed("the VMM did not stop on SIGTERM".to_string())
                    .failed("destroy", def.name.as_str()),
            );
        }
        procfs::signal(active.process, libc::SIGKILL);
        if !procfs::wait_gone(active.process, KILL_WAIT) {
            return Err(VmError::OperationFailed(format!(
                "vmm pid {} did not end after SIGKILL",
                active.process.pid
            ))
            .failed("destroy", def.name.as_str()));
        }
    }
    active.run.clean();
    ctx.store
        .set_shutoff_reason(&def.name, reason::SHUTOFF_DESTROYED)?;
    ctx.extra(out, &format!("Domain '{}' destroyed\n", def.name));
    Ok(())
}

/// `reboot DOMAIN`.
pub fn reboot(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "reboot")?;
    active
        .client(CALL_TIMEOUT)
        .reboot()
        .map_err(|e| VmError::from(e).failed("reboot", def.name.as_str()))?;
    ctx.extra(out, &format!("Domain '{}' is being rebooted\n", def.name));
    Ok(())
}

/// `reset DOMAIN`: a hard reset (CH's vm.reboot resets the VM).
pub fn reset(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "reset")?;
    active
        .client(CALL_TIMEOUT)
        .reboot()
        .map_err(|e| VmError::from(e).failed("reset", def.name.as_str()))?;
    ctx.extra(out, &format!("Domain '{}' was reset\n", def.name));
    Ok(())
}

/// `suspend DOMAIN`.
pub fn suspend(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "suspend")?;
    if active.info.as_ref().map(|i| i.state) != Some(VmState::Paused) {
        active
            .client(CALL_TIMEOUT)
            .pause()
            .map_err(|e| VmError::from(e).failed("suspend", def.name.as_str()))?;
    }
    active.run.set_reason(state::PAUSED, reason::PAUSED_USER);
    ctx.extra(out, &format!("Domain '{}' suspended\n", def.name));
    Ok(())
}

/// `resume DOMAIN`.
pub fn resume(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let (def, _lock, active) = running(ctx, inv, "resume")?;
    if active.info.as_ref().map(|i| i.state) != Some(VmState::Running) {
        active
            .client(CALL_TIMEOUT)
            .resume()
            .map_err(|e| VmError::from(e).failed("resume", def.name.as_str()))?;
    }
    active
        .run
        .set_reason(state::RUNNING, reason::RUNNING_UNPAUSED);
    ctx.extra(out, &format!("Domain '{}' resumed\n", def.name));
    Ok(())
}
