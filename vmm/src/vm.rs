//! A VM: KVM with its in-kernel irqchip and PIT, guest memory, the
//! loaded guest, the devices, the device thread and one thread per vCPU.
//! [`Vm::build`] sets it all up with the vCPUs parked or running;
//! [`Vm::pause`], [`Vm::resume`] and [`Vm::power_button`] act on it;
//! [`Vm::stop`] stops the vCPUs and the device thread and closes the disks
//! clean. What happens to a VM is decided in one place, `control`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use blockdev::virtio::stats::DiskStats;

use crate::boot;
use crate::config::{check_counts, VmConfig};
use crate::config::{DiskCache, DiskConfig, DiskFormat};
use crate::cpu;
use crate::devices::event_loop::{self, LoopMessage};
use crate::devices::ged::{Ged, SleepRegisters};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_LEN};
use crate::devices::serial::{SerialPort, SERIAL_PORT, SERIAL_PORT_LEN};
use crate::devices::virtio_mmio::{Interrupt, VirtioMmio, REG_QUEUE_NOTIFY};
use crate::devices::Bus;
use crate::error::{kvm, Error, Result};
use crate::kvm_shell::KvmShell;
use crate::layout::{
    ram_ranges, virtio_mmio_base, GED_GSI, GED_SIZE, GED_START, SERIAL_GSI, SLEEP_CONTROL_PORT,
    VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE,
};
use crate::state::{
    self,
    machine::{ConfigSummary, MachineState},
    vcpu::VcpuState,
    StateError,
};
use crate::sys::{install_kick_handler, LockRole};
pub use crate::vcpu::{ExitState, VmExit};
use crate::vcpu::{VcpuContext, VcpuSet};
use crate::vcpu_capture::VcpuCapture;

mod revert;
pub use revert::{InPlaceError, RevertPhases};

/// Offset of `acpi_rsdp_addr` in boot_params.
const ACPI_RSDP_ADDR_OFFSET: u64 = 0x70;

/// What the run measured, for the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTimes {
    /// From the VMM's start to the guest's first serial byte.
    pub first_serial_byte: Option<Duration>,
    /// From the VMM's start to the boot vCPU's first KVM_RUN: host time
    /// spent before the guest runs at all.
    pub setup: Option<Duration>,
    /// From the VMM's start to the guest's exit.
    pub exit: Duration,
}

/// Where a build's time went, phase by phase (each from the end of the
/// last; the first from the build's start). A migration's destination
/// prints it in its phase log.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildTimes {
    /// Taking the image locks and opening the disks.
    pub disks: Duration,
    /// The taps and KVM (made ahead for a migration: only taken over).
    pub kvm: Duration,
    /// The port devices, the transports and their eventfds.
    pub devices: Duration,
    /// KVM's VM-wide state, every vCPU's, the serial port's and the
    /// GED's (restores).
    pub state: Duration,
    /// Starting the device thread.
    pub device_thread: Duration,
    /// The transports' state (restores: an activated one opens its
    /// device's queues).
    pub transports: Duration,
    /// Starting the vCPU threads.
    pub threads: Duration,
}

impl std::fmt::Display for BuildTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "disks {:.1} ms, kvm {:.1} ms, devices {:.1} ms, state {:.1} ms, device thread {:.1} ms, transports {:.1} ms, vCPU threads {:.1} ms",
            ms(self.disks),
            ms(self.kvm),
            ms(self.devices),
            ms(self.state),
            ms(self.device_thread),
            ms(self.transports),
            ms(self.threads)
        )
    }
}

/// The name of a VM's device thread.
pub const DEVICE_THREAD: &str = "devices";

/// What the controller gives each VM it builds: where the guest's end and
/// resets are reported, and where the serial port goes.
pub struct VmHooks {
    /// The guest's end.
    pub exit: Arc<ExitState>,
    /// Written by the i8042 when the guest resets.
    pub reset: EventFd,
    /// The serial port's output.
    pub serial_out: Box<dyn std::io::Write + Send>,
    /// The VMM's start (times are measured from it).
    pub started: Instant,
}

/// A built VM.
pub struct Vm {
    // Field order is drop order: the vCPUs and devices go before the
    // memory and the VM fd.
    vcpus: Option<VcpuSet>,
    device_thread: Option<std::thread::JoinHandle<()>>,
    loop_tx: std::sync::mpsc::Sender<LoopMessage>,
    wake_loop: EventFd,
    /// The transports (held until the VM is dropped).
    _mmio: Arc<Bus>,
    backends: Vec<Arc<dyn blockdev::disk::BlockBackend>>,
    disks: Vec<DiskConfig>,
    stats: Vec<(String, Arc<DiskStats>)>,
    /// Each disk's tracker of guest writes (a migration copying disks).
    write_trackers: Vec<Arc<blockdev::virtio::disk_dirty::DiskWriteTracker>>,
    serial: Arc<Mutex<SerialPort>>,
    ged: Arc<Mutex<Ged>>,
    exit: Arc<ExitState>,
    started: Instant,
    transports: Vec<Arc<Mutex<VirtioMmio>>>,
    nets: Vec<crate::devices::net::NetDevice>,
    /// The loader of RAM still being filled lazily (a revert, a fork, a
    /// restore from files), if any: settled before anything needs the
    /// whole RAM.
    lazy_ram: Option<crate::lazy_ram::LazyRam>,
    /// Whether the VM's threads run under seccomp filters.
    seccomp: bool,
    mem: GuestMemoryMmap,
    msr_indices: Vec<u32>,
    summary: ConfigSummary,
    vm: VmFd,
    locks: Vec<std::fs::File>,
    /// What `locks` hold, to take them again (a migration that fails
    /// after the source let go of them).
    lock_specs: Vec<LockSpec>,
    /// Closed while the VM is paused: the NICs' announcements wait.
    announce_gate: Arc<crate::devices::announcer::RunGate>,
    /// Where the build's time went.
    build_times: BuildTimes,
}

/// One image lock a VM holds: which disk, which file, in which role.
#[derive(Debug, Clone)]
struct LockSpec {
    disk: usize,
    path: std::path::PathBuf,
    writable: bool,
    role: LockRole,
}

/// Where a VM's state comes from when it is not booted.
pub enum RestoreFrom<'a> {
    /// A snapshot's directory (CH's layout of files).
    Dir(&'a std::path::Path),
    /// A migration: the machine's state, and the KVM VM made while its
    /// RAM was received.
    Migration(Box<MachineState>, KvmShell),
    /// A full internal snapshot of the VM's disks, by name, and the RAM
    /// of the VM it replaces in this process, if any, to load it into.
    Image(&'a str, Option<&'a GuestMemoryMmap>),
}

/// Maps guest memory (zeroed), not yet known to KVM.
pub fn map_guest_memory(memory: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::<()>::from_ranges(&ranges)
        .map_err(|e| Error::Memory(format!("mapping {} MiB: {e}", memory >> 20)))
}

/// Whether `mem`'s regions are the RAM ranges of a VM of `memory` bytes.
fn same_ranges(mem: &GuestMemoryMmap, memory: u64) -> bool {
    let ranges = ram_ranges(memory);
    mem.num_regions() == ranges.len()
        && mem
            .iter()
            .zip(&ranges)
            .all(|(r, &(start, len))| r.start_addr().0 == start && r.len() == len)
}

/// Maps guest memory (or takes `reuse`, the RAM of a stopped VM of the
/// same layout) and registers it with KVM.
fn guest_memory(
    vm: &VmFd,
    memory: u64,
    reuse: Option<&GuestMemoryMmap>,
) -> Result<GuestMemoryMmap> {
    let mem = match reuse {
        Some(mem) => mem.clone(),
        None => map_guest_memory(memory)?,
    };
    register_memory(vm, &mem, 0)?;
    Ok(mem)
}

/// Registers (or registers again, with other `flags`) each region of
/// `mem` as KVM memory slot N, N its position in `mem`.
pub(crate) fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(e.to_string()))?;
        let entry = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, whose clones (held by the vCPU threads and the devices)
        // keep it mapped until they are gone, which `Vm::stop` and the
        // field order of `Vm` ensure happens before the VM fd is closed;
        // slots do not overlap.
        unsafe { vm.set_user_memory_region(entry) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

impl Vm {
    /// Builds the VM described by `config`: disks opened and locked first
    /// (a missing, locked or corrupt one stops us before anything else),
    /// then KVM, memory, the guest, the devices and the vCPU threads,
    /// parked when `paused`.
    pub fn build(config: &VmConfig, hooks: VmHooks, paused: bool) -> Result<Vm> {
        Self::build_from(config, hooks, paused, None)
    }

    /// Builds the VM described by `config` from the snapshot in `dir`
    /// (CH's layout of files holding our records), paused: KVM's VM-wide
    /// state, then each vCPU, RAM and the devices, whose queues are
    /// registered and served (kicked) at resume.
    pub fn restore(config: &VmConfig, hooks: VmHooks, dir: &std::path::Path) -> Result<Vm> {
        let vm = Self::build_from(config, hooks, true, Some(RestoreFrom::Dir(dir)))?;
        vm.new_generation()?;
        Ok(vm)
    }

    /// Builds the VM described by `config` from the full internal snapshot
    /// `name` of its disks, paused: every writable qcow2 disk is reverted
    /// to it and the VM state is read from the first disk's VM-state area.
    /// `reuse` is the RAM of the stopped VM this one replaces: loading the
    /// state over it costs no page fault per page, as a fresh mapping does.
    pub fn restore_from_image(
        config: &VmConfig,
        hooks: VmHooks,
        name: &str,
        reuse: Option<&GuestMemoryMmap>,
    ) -> Result<Vm> {
        let vm = Self::build_from(config, hooks, true, Some(RestoreFrom::Image(name, reuse)))?;
        vm.new_generation()?;
        Ok(vm)
    }

    /// Builds the VM described by `config` from a migration's state, paused,
    /// in `shell`: the KVM VM made for `config` while the RAM was received
    /// into its memory (mapped by [`map_guest_memory`]). Only the disks,
    /// the devices and the state are left to do.
    pub fn from_migration(
        config: &VmConfig,
        hooks: VmHooks,
        machine: MachineState,
        shell: KvmShell,
    ) -> Result<Vm> {
        if shell.cpus() != config.cpus {
            return Err(Error::GuestFault(format!(
                "the KVM VM made ahead has {} vCPUs, the configuration {}",
                shell.cpus(),
                config.cpus
            )));
        }
        Self::build_from(
            config,
            hooks,
            true,
            Some(RestoreFrom::Migration(Box::new(machine), shell)),
        )
    }

    fn build_from(
        config: &VmConfig,
        hooks: VmHooks,
        paused: bool,
        restore: Option<RestoreFrom<'_>>,
    ) -> Result<Vm> {
        let summary = ConfigSummary {
            cpus: config.cpus,
            memory: config.memory,
            disks: config.disks.len() as u32,
            nets: config.net.len() as u32,
        };
        // A state that does not fit is refused before any disk is locked.
        let (mut machine, restore_dir, shell, image_name) = match restore {
            Some(RestoreFrom::Dir(dir)) => (
                Some(state::snapshot::read_machine(dir, summary)?),
                Some(dir),
                None,
                None,
            ),
            Some(RestoreFrom::Migration(machine, shell)) => {
                (Some(*machine), None, Some(shell), None)
            }
            Some(RestoreFrom::Image(name, reuse)) => (None, None, None, Some((name, reuse))),
            None => (None, None, None, None),
        };
        check_counts(config.cpus, config.disks.len())?;
        let mut build_times = BuildTimes::default();
        let mut mark = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            let took = now - mark;
            mark = now;
            took
        };
        let mut locks = Vec::new();
        let mut lock_specs = Vec::new();
        let mut backends = Vec::new();
        for (index, disk) in config.disks.iter().enumerate() {
            let image = image_lock_spec(index, disk);
            locks.push(take_lock(disk, &image)?);
            lock_specs.push(image);
            let opened = open_disk(disk)?;
            for spec in file_lock_specs(index, disk, &opened) {
                locks.push(take_lock(disk, &spec)?);
                lock_specs.push(spec);
            }
            backends.push(opened.backend);
        }
        build_times.disks = lap();
        // An in-image state is read, checked and its disks reverted on a
        // thread of its own while KVM builds the VM (joined before the
        // state is loaded; a failure on either side drops the other).
        let pending = match image_name {
            Some((name, _)) => Some((
                name,
                state::in_image::PendingRevert::start(&backends, &config.disks, name, summary)?,
            )),
            None => None,
        };
        let opened_nets = crate::devices::net::open_taps(&config.net)?;
        let slots = backends.len() + opened_nets.len();
        install_kick_handler()?;

        let reuse = image_name
            .and_then(|(_, reuse)| reuse)
            .filter(|m| same_ranges(m, config.memory));
        // A migration's KVM VM was made while its RAM arrived.
        let (kvm_fd, vm, mem, made_vcpus, ready_vcpu_threads, ready_device_thread) = match shell {
            Some(KvmShell {
                vcpu_threads,
                device_thread,
                vcpus,
                mem,
                vm,
                kvm,
            }) => (kvm, vm, mem, vcpus, vcpu_threads, device_thread),
            None => {
                let kvm_fd = Kvm::new().map_err(kvm("opening /dev/kvm"))?;
                let vm = crate::kvm_shell::create_vm(&kvm_fd)?;
                let mem = guest_memory(&vm, config.memory, reuse)?;
                (kvm_fd, vm, mem, Vec::new(), Vec::new(), None)
            }
        };
        build_times.kvm = lap();
        // Each disk is also described on the command line, for kernels built
        // with virtio_mmio's command-line option (and the test guest).
        let mut cmdline = config.cmdline.clone();
        for i in 0..slots {
            cmdline.push_str(&format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                virtio_mmio_base(i),
                VIRTIO_FIRST_GSI + i as u32
            ));
        }
        let loaded = if machine.is_some() || pending.is_some() {
            None
        } else {
            Some(boot::load(
                &mem,
                &config.kernel,
                config.initrd.as_deref(),
                cmdline.trim_start(),
                config.memory,
            )?)
        };

        if loaded.is_some() {
            // ACPI tables, and their address in boot_params (acpi_rsdp_addr).
            let rsdp = crate::acpi::write_tables(&mem, config.cpus, slots)?;
            crate::devices::vmgenid::GenerationId::random()?.write(&mem)?;
            vm_memory::Bytes::write_obj(
                &mem,
                rsdp,
                GuestAddress(crate::layout::ZERO_PAGE_START + ACPI_RSDP_ADDR_OFFSET),
            )
            .map_err(|e| Error::Memory(format!("writing acpi_rsdp_addr: {e}")))?;
        }

        let exit = hooks.exit;
        let serial_irq = new_eventfd()?;
        vm.register_irqfd(&serial_irq, SERIAL_GSI)
            .map_err(kvm("KVM_IRQFD (serial)"))?;
        let serial = Arc::new(Mutex::new(SerialPort::new(serial_irq, hooks.serial_out)));
        let mut io = Bus::new("port");
        io.insert(SERIAL_PORT, SERIAL_PORT_LEN, serial.clone());
        io.insert(
            I8042_DATA_PORT,
            I8042_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(
                hooks.reset.try_clone().map_err(|e| io_err("eventfd", e))?,
            ))),
        );
        let sleep_exit = exit.clone();
        io.insert(
            SLEEP_CONTROL_PORT,
            2,
            Arc::new(Mutex::new(SleepRegisters::new(Box::new(move || {
                sleep_exit.finish(VmExit::PowerOff)
            })))),
        );
        let io = Arc::new(io);

        // The reverted disks' sizes size the devices.
        let area = match pending {
            Some((name, pending)) => {
                let reverted = pending.finish()?;
                machine = Some(reverted.machine);
                Some((name, reverted.ram))
            }
            None => None,
        };
        // The disks' transports, and the device thread that serves them.
        let (loop_tx, loop_rx) = std::sync::mpsc::channel::<LoopMessage>();
        let wake_loop = new_eventfd()?;
        let shared_mem = Arc::new(mem.clone());
        let mut mmio = Bus::new("MMIO");
        let ged_irq = new_eventfd()?;
        vm.register_irqfd(&ged_irq, GED_GSI)
            .map_err(kvm("KVM_IRQFD (GED)"))?;
        let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
        mmio.insert(GED_START, GED_SIZE, ged.clone());
        let queues = config.cpus.clamp(1, 4) as u16;
        let mut stats = Vec::new();
        let mut write_trackers = Vec::new();
        let mut transports = Vec::new();
        for (i, backend) in backends.iter().enumerate() {
            let device = blockdev::virtio::VirtioBlock::new(
                backend.clone(),
                blockdev::virtio::DeviceOptions {
                    num_queues: queues,
                    serial: format!("vmm-disk-{i}").into_bytes(),
                    ..Default::default()
                },
            )
            .map_err(|e| disk_err(&config.disks[i], e.to_string()))?;
            stats.push((config.disks[i].id.clone(), device.stats()));
            write_trackers.push(device.write_tracker());
            let base = virtio_mmio_base(i);
            let mut notify = Vec::new();
            for q in 0..queues {
                let evt = new_eventfd()?;
                vm.register_ioevent(
                    &evt,
                    &kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    u32::from(q),
                )
                .map_err(kvm("KVM_IOEVENTFD"))?;
                notify.push(evt);
            }
            let irqfd = new_eventfd()?;
            vm.register_irqfd(&irqfd, VIRTIO_FIRST_GSI + i as u32)
                .map_err(kvm("KVM_IRQFD (virtio)"))?;
            let interrupt = Arc::new(Interrupt {
                status: std::sync::atomic::AtomicU32::new(0),
                irqfd,
            });
            let transport = VirtioMmio::new(
                i,
                Box::new(device),
                shared_mem.clone(),
                notify,
                interrupt,
                loop_tx.clone(),
                wake_loop.try_clone().map_err(|e| io_err("eventfd", e))?,
            );
            let transport = Arc::new(Mutex::new(transport));
            transports.push(transport.clone());
            mmio.insert(base, VIRTIO_MMIO_SIZE, transport);
        }
        let nets = crate::devices::net::attach(
            opened_nets,
            backends.len(),
            &mut mmio,
            &mut transports,
            &crate::devices::virtio_mmio::SlotWiring {
                vm: &vm,
                mem: &shared_mem,
                event_loop: &loop_tx,
                wake_loop: &wake_loop,
            },
        )?;
        let mmio = Arc::new(mmio);
        let stdin = (config.serial_input && config.serial == crate::config::SerialSpec::Tty)
            .then(|| std::io::stdin().as_raw_fd());
        // The vCPUs first: what can still fail does so before any thread
        // of this VM exists.
        let mut vcpus = made_vcpus;
        for id in vcpus.len() as u32..config.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            if let Some(loaded) = &loaded {
                cpu::configure(
                    &kvm_fd,
                    &vcpu,
                    (id, config.cpus),
                    loaded.entry,
                    &config.cpuid_mask,
                )?;
            }
            vcpus.push(vcpu);
        }
        build_times.devices = lap();
        let msr_indices = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        let mut lazy_ram = None;
        if let Some(machine) = &machine {
            // KVM's VM-wide state first, then each vCPU (CPUID2 first,
            // VCPU_EVENTS last), then RAM; the devices once the device
            // thread runs.
            vm.set_pit2(&machine.pit).map_err(kvm("KVM_SET_PIT2"))?;
            vm.set_clock(&machine.clock).map_err(kvm("KVM_SET_CLOCK"))?;
            for chip in &machine.irqchips {
                vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
            }
            for (vcpu, saved) in vcpus.iter().zip(&machine.vcpus) {
                saved.restore(vcpu)?;
            }
            // RAM is indexed now and filled lazily (crate::lazy_ram) when
            // it can be: the loader serves the devices' restore below and
            // the guest from here on.
            if let Some(dir) = restore_dir {
                lazy_ram = crate::lazy_ram::file::load(dir, summary, &mem, config.seccomp)?.0;
            } else if let Some((name, ram)) = &area {
                let first = state::in_image::state_image(&config.disks, &backends)?;
                let over = reuse.is_some();
                let seccomp = config.seccomp;
                let wanted = crate::lazy_ram::first_pages(machine);
                lazy_ram = crate::lazy_ram::load(
                    first,
                    name,
                    *ram,
                    machine.config,
                    &mem,
                    over,
                    seccomp,
                    &wanted,
                )?
                .0;
            }
            serial
                .lock()
                .expect("serial lock")
                .restore(&machine.serial)
                .map_err(|e| io_err("restoring the serial port", e))?;
            ged.lock().expect("GED lock").set_events(machine.ged);
        }
        build_times.state = lap();
        let config_seccomp = config.seccomp;
        let poll_max = config.poll_max;
        let device_thread = {
            let wake = wake_loop.try_clone().map_err(|e| io_err("eventfd", e))?;
            let serial = serial.clone();
            crate::ready_thread::run_on(ready_device_thread, DEVICE_THREAD, move || {
                event_loop::run(
                    loop_rx,
                    wake,
                    serial,
                    stdin,
                    config_seccomp,
                    poll_max,
                    paused,
                )
            })?
        };

        build_times.device_thread = lap();
        let context_mem = mem.clone();
        let context = VcpuContext {
            io,
            mmio: mmio.clone(),
            mem,
            exit: exit.clone(),
            seccomp: config.seccomp,
        };
        if let Some(machine) = &machine {
            // An interface's device takes its pairs and stashed receive
            // chains first: its transport's restore activates it.
            // (Checked against the configuration even when the driver had
            // not activated it: the MAC and pair count must match.)
            let net_transports = transports.iter().skip(config.disks.len());
            let net_virtio = machine.virtio.iter().skip(config.disks.len());
            for (((transport, net), saved), virtio) in net_transports
                .zip(&config.net)
                .zip(&machine.nets)
                .zip(net_virtio)
            {
                let mut transport = transport.lock().expect("transport lock");
                crate::devices::net::restore_state(&mut transport, net, saved, virtio.activated)?;
            }
            for (transport, saved) in transports.iter().zip(&machine.virtio) {
                transport
                    .lock()
                    .expect("transport lock")
                    .restore_state(saved)
                    .map_err(Error::GuestFault)?;
            }
        }
        build_times.transports = lap();
        let vcpus = VcpuSet::start_on(vcpus, ready_vcpu_threads, &context, paused)?;
        build_times.threads = lap();
        Ok(Vm {
            vcpus: Some(vcpus),
            device_thread: Some(device_thread),
            loop_tx,
            wake_loop,
            _mmio: mmio,
            backends,
            disks: config.disks.clone(),
            stats,
            write_trackers,
            serial,
            ged,
            exit,
            started: hooks.started,
            transports,
            nets,
            lazy_ram,
            seccomp: config.seccomp,
            mem: context_mem,
            msr_indices,
            summary,
            vm,
            locks,
            lock_specs,
            announce_gate: Arc::default(),
            build_times,
        })
    }

    /// Where the build's time went.
    pub fn build_times(&self) -> BuildTimes {
        self.build_times
    }

    /// The serial port (for a console to feed input to).
    pub fn serial(&self) -> Arc<Mutex<SerialPort>> {
        self.serial.clone()
    }

    /// Each disk's id and counters.
    pub fn stats(&self) -> &[(String, Arc<DiskStats>)] {
        &self.stats
    }

    /// Each network interface's id, tap and counters.
    pub fn nets(&self) -> &[crate::devices::net::NetDevice] {
        &self.nets
    }

    fn tell_loop(&self, message: LoopMessage) -> bool {
        let sent = self.loop_tx.send(message).is_ok();
        if sent {
            let _ = self.wake_loop.write(1);
        }
        sent
    }

    /// Takes every vCPU out of the guest, then waits for the disks'
    /// requests in flight to complete.
    pub fn pause(&self) -> Result<()> {
        self.pause_vcpus()?;
        self.drain_queues()
    }

    /// The first half of [`Vm::pause`]: every vCPU out of the guest.
    pub(crate) fn pause_vcpus(&self) -> Result<()> {
        self.announce_gate.close();
        if let Some(vcpus) = &self.vcpus {
            vcpus.pause()?;
        }
        Ok(())
    }

    /// A capture for [`Vm::pause_vcpus_capturing`], made ahead of the
    /// pause (None without vCPUs).
    pub(crate) fn vcpu_capture(&self) -> Option<Arc<VcpuCapture>> {
        let vcpus = self.vcpus.as_ref()?;
        Some(Arc::new(VcpuCapture::new(
            vcpus.fds().len(),
            self.msr_indices.clone(),
            self.vm.check_extension(kvm_ioctls::Cap::SyncRegs),
        )))
    }

    /// [`Vm::pause_vcpus`], each vCPU reading its own state (but its
    /// LAPIC) into `capture` ([`Vm::vcpu_capture`]) as it leaves the guest
    /// ([`crate::vcpu_capture`]), for [`Vm::save_machine_collected`];
    /// returns with those reads under way.
    pub(crate) fn pause_vcpus_capturing(&self, capture: &Arc<VcpuCapture>) -> Result<()> {
        self.announce_gate.close();
        if let Some(vcpus) = &self.vcpus {
            vcpus.pause_capturing(capture.clone())?;
        }
        Ok(())
    }

    /// Has the vCPU threads warm their stack and heap for a migration's
    /// paused window ([`VcpuSet::warm_threads`]).
    pub(crate) fn warm_vcpu_threads(&self) {
        if let Some(vcpus) = &self.vcpus {
            vcpus.warm_threads();
        }
    }

    /// When each vCPU left the guest for the last pause, and the kicks it
    /// took (None without vCPUs).
    pub(crate) fn last_pause(&self) -> Option<crate::vcpu_pause_times::PauseTimes> {
        self.vcpus.as_ref().map(|v| v.last_pause())
    }

    /// The second half of [`Vm::pause`]: the disks' requests in flight
    /// completed, their queues stopped.
    pub(crate) fn drain_queues(&self) -> Result<()> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tell_loop(LoopMessage::Pause(done_tx)) {
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| Error::GuestFault("disk queues did not drain within 30 s".into()))?;
        }
        Ok(())
    }

    /// [`Vm::drain_queues`] (nothing to drain when paused already) and,
    /// in the same round trip to the device thread, every device's queue
    /// positions and held state, for [`Vm::save_machine_collected`].
    pub(crate) fn drain_and_collect(&self) -> Result<event_loop::PausedDevices> {
        let (reply, answer) = std::sync::mpsc::channel();
        if !self.tell_loop(LoopMessage::PauseAndCollect(reply)) {
            return Ok(event_loop::PausedDevices::default());
        }
        answer
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| Error::GuestFault("disk queues did not drain within 30 s".into()))
    }

    /// Waits, at most `bound`, for a moment when no disk request is in
    /// flight (none of the device thread's queues has one as it goes to
    /// sleep); whether one came. The guest runs on meanwhile.
    pub(crate) fn wait_for_idle_disks(&self, bound: Duration) -> bool {
        let (reply, answer) = std::sync::mpsc::channel();
        if !self.tell_loop(LoopMessage::WhenIdle(reply)) {
            return true;
        }
        answer.recv_timeout(bound).is_ok()
    }

    /// Restarts the disk queues, then the vCPUs. The first resume of a
    /// restored VM starts its NICs' announcements (stepped by a thread of
    /// their own, `devices::announcer`); an announcement under way before
    /// a pause goes on later by the pause's length.
    pub fn resume(&self) {
        self.tell_loop(LoopMessage::Resume);
        if let Some(paused_for) = self.announce_gate.closed_for() {
            for transport in &self.transports {
                transport
                    .lock()
                    .expect("transport lock")
                    .postpone_announce(paused_for);
            }
        }
        self.announce_gate.open();
        let mut announcing = Vec::new();
        for transport in &self.transports {
            let wake = transport
                .lock()
                .expect("transport lock")
                .announce_after_restore();
            if let Some(wake) = wake {
                announcing.push((Arc::downgrade(transport), wake));
            }
        }
        crate::devices::announcer::spawn(announcing, self.announce_gate.clone());
        let progress = self.lazy_ram.as_ref().map(|lazy| lazy.progress());
        if let Some(vcpus) = &self.vcpus {
            vcpus.resume();
        }
        // Said once the vCPUs run.
        if let Some((filled, total)) = progress.filter(|(filled, total)| filled < total) {
            crate::control::log_line(format!(
                "vmm: resuming with {} of {} MiB of the snapshot's RAM filled (the rest on demand)",
                filled >> 20,
                total >> 20
            ));
        }
    }

    /// Writes the paused VM's state into `dir` in CH's layout (config.json
    /// holding `config_json`, state.json, memory-ranges). Returns the
    /// bytes of RAM saved.
    pub fn snapshot(&self, dir: &std::path::Path, config_json: &[u8]) -> Result<u64> {
        let machine = self.save_machine()?;
        Ok(state::snapshot::write_dir(
            dir,
            config_json,
            &machine,
            &self.mem,
        )?)
    }

    /// Each disk's configuration and backend.
    pub(crate) fn disks(&self) -> (&[DiskConfig], &[Arc<dyn blockdev::disk::BlockBackend>]) {
        (&self.disks, &self.backends)
    }

    /// Each disk's tracker of guest writes, in disk order.
    pub(crate) fn disk_write_trackers(
        &self,
    ) -> &[Arc<blockdev::virtio::disk_dirty::DiskWriteTracker>] {
        &self.write_trackers
    }

    /// Waits until RAM loaded lazily ([`crate::lazy_ram`]) is whole: before
    /// anything reads all of it, changes or frees the snapshot it comes
    /// from, or ends the VM.
    pub fn settle_ram(&self) {
        if let Some(lazy) = &self.lazy_ram {
            lazy.settle();
        }
    }

    /// Hands this VM the loader of its RAM (a fork's, started before the
    /// VM was built).
    pub fn set_lazy_ram(&mut self, lazy: Option<crate::lazy_ram::LazyRam>) {
        self.settle_ram();
        self.lazy_ram = lazy;
    }

    /// The paused VM's state but its RAM: every vCPU, KVM's VM-wide
    /// state and the devices (RAM loaded lazily is settled first).
    pub fn save_machine(&self) -> Result<MachineState> {
        self.save_machine_from(None, None, &mut Vec::new())
    }

    /// [`Vm::save_machine`] with the devices' queues as
    /// [`Vm::drain_and_collect`] answered, without asking the device
    /// thread again, and the vCPUs' states as they read them into
    /// `capture` ([`Vm::pause_vcpus_capturing`]) but their LAPICs, read
    /// now.
    pub(crate) fn save_machine_collected(
        &self,
        devices: event_loop::PausedDevices,
        capture: Option<&VcpuCapture>,
    ) -> Result<(MachineState, Vec<Duration>)> {
        let mut captures = Vec::new();
        let machine = self.save_machine_from(Some(devices), capture, &mut captures)?;
        Ok((machine, captures))
    }

    /// The machine's state; `captures` gets how long each vCPU captured
    /// by `capture` took to read its state on its own thread.
    fn save_machine_from(
        &self,
        mut collected: Option<event_loop::PausedDevices>,
        capture: Option<&VcpuCapture>,
        captures: &mut Vec<Duration>,
    ) -> Result<MachineState> {
        self.settle_ram();
        let vcpus = self
            .vcpus
            .as_ref()
            .ok_or_else(|| Error::GuestFault("the VM has no vCPUs".into()))?;
        let mut saved_vcpus = Vec::new();
        for (id, fd) in vcpus.fds().iter().enumerate() {
            let captured = capture.and_then(|c| c.wait(id, Duration::from_secs(5)));
            let fd = fd.lock().expect("vCPU fd lock");
            let state = match captured {
                Some(captured) => {
                    let (mut state, took) = captured?;
                    captures.push(took);
                    state.lapic = fd.get_lapic().map_err(|e| StateError::Kvm {
                        what: "KVM_GET_LAPIC",
                        reason: e.to_string(),
                    })?;
                    state
                }
                None => VcpuState::save(&fd, &self.msr_indices)?,
            };
            saved_vcpus.push(state);
        }
        let kvm_err = |what: &'static str| {
            move |e: kvm_ioctls::Error| StateError::Kvm {
                what,
                reason: e.to_string(),
            }
        };
        let pit = self.vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
        let clock = self.vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
        let mut irqchips = [kvm_bindings::kvm_irqchip::default(); 3];
        for (id, chip) in irqchips.iter_mut().enumerate() {
            chip.chip_id = id as u32;
            self.vm
                .get_irqchip(chip)
                .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        }
        let mut virtio = Vec::new();
        for (slot, transport) in self.transports.iter().enumerate() {
            if let Some(devices) = &collected {
                let served = devices.positions_of(slot);
                virtio.push(
                    transport
                        .lock()
                        .expect("transport lock")
                        .save_state(&served),
                );
                continue;
            }
            let (reply, positions) = std::sync::mpsc::channel();
            let mut served = Vec::new();
            if self.tell_loop(LoopMessage::Positions {
                device: slot,
                reply,
            }) {
                served = positions
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| Error::GuestFault("the device thread did not answer".into()))?;
            }
            virtio.push(
                transport
                    .lock()
                    .expect("transport lock")
                    .save_state(&served),
            );
        }
        // Each interface's device state beyond its transport (the taps
        // are not state: a restored VM opens its own).
        let mut nets = Vec::new();
        for (slot, transport) in self.transports.iter().enumerate().skip(self.disks.len()) {
            let mut held = event_loop::HeldState::default();
            if let Some(devices) = collected.as_mut() {
                held = devices.take_held(slot);
            } else {
                let (reply, answer) = std::sync::mpsc::channel();
                if self.tell_loop(LoopMessage::HeldState {
                    device: slot,
                    reply,
                }) {
                    held = answer.recv_timeout(Duration::from_secs(5)).map_err(|_| {
                        Error::GuestFault("the device thread did not answer".into())
                    })?;
                }
            }
            let transport = transport.lock().expect("transport lock");
            nets.push(crate::devices::net::save_state(&transport, &held));
        }
        Ok(MachineState {
            config: self.summary,
            vcpus: saved_vcpus,
            pit,
            clock,
            irqchips,
            serial: self.serial.lock().expect("serial lock").state(),
            ged: self.ged.lock().expect("GED lock").events(),
            virtio,
            nets,
        })
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM (for the migration's dirty log).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Flushes every disk (data and metadata on stable storage), as at a
    /// migration's switch; the disks stay open.
    pub fn flush_disks(&self) -> Result<()> {
        for (backend, disk) in self.backends.iter().zip(&self.disks) {
            backend
                .close()
                .map_err(|e| disk_err(disk, format!("flushing: {e}")))?;
        }
        Ok(())
    }

    /// Lets go of every image lock (a migration's switch: the destination
    /// takes them).
    pub fn release_locks(&mut self) {
        self.locks.clear();
    }

    /// Takes every image lock again after [`Vm::release_locks`] (a
    /// migration that failed after its switch).
    pub fn retake_locks(&mut self) -> Result<()> {
        if !self.locks.is_empty() {
            return Ok(());
        }
        let mut locks = Vec::with_capacity(self.lock_specs.len());
        for spec in &self.lock_specs {
            locks.push(take_lock(&self.disks[spec.disk], spec)?);
        }
        self.locks = locks;
        Ok(())
    }

    /// Ends a VM whose guest now runs elsewhere (a migration's source):
    /// stops its threads and leaves its disks exactly as they are, with
    /// no flush or clean mark written (the destination owns them now).
    pub fn abandon(mut self) {
        self.settle_ram();
        for backend in &self.backends {
            // The last reference would flush on drop: keep one for the
            // rest of the process.
            std::mem::forget(backend.clone());
        }
        if let Some(vcpus) = self.vcpus.take() {
            vcpus.stop();
        }
        self.tell_loop(LoopMessage::Stop);
        if let Some(thread) = self.device_thread.take() {
            let _ = thread.join();
        }
    }

    /// Presses the ACPI power button.
    pub fn power_button(&self) -> Result<()> {
        self.ged
            .lock()
            .expect("GED lock")
            .power_button()
            .map_err(|e| io_err("raising the GED interrupt", e))
    }

    /// Gives the guest a new VM generation ID and tells it so (the GED's
    /// generation event): after a restore, a revert or a fork, whose RAM
    /// may run more than once. Not after a migration: the same VM goes on.
    pub fn new_generation(&self) -> Result<crate::devices::vmgenid::GenerationId> {
        let id = crate::devices::vmgenid::GenerationId::random()?;
        self.start_generation(id, false)?;
        Ok(id)
    }

    /// Makes `id` the VM generation ID and tells the guest: writes it into
    /// RAM unless `written` (the lazy RAM loader lays it into its page,
    /// `crate::lazy_ram::Registered::patch`), then raises the GED's
    /// generation event.
    pub(crate) fn start_generation(
        &self,
        id: crate::devices::vmgenid::GenerationId,
        written: bool,
    ) -> Result<()> {
        if !written {
            id.write(&self.mem)?;
        }
        self.ged
            .lock()
            .expect("GED lock")
            .generation_changed()
            .map_err(|e| io_err("raising the GED interrupt", e))
    }

    /// Stops the vCPUs and the device thread, flushes every disk and marks
    /// it clean, and releases the image locks.
    pub fn stop(mut self) -> Result<RunTimes> {
        self.halt()
    }

    /// [`Vm::stop`], then what is left (KVM's VM, whose teardown takes
    /// tens of milliseconds on a nested host) is dropped on a thread of
    /// its own: a revert builds the next VM meanwhile.
    pub fn stop_dropping_behind(mut self) -> Result<RunTimes> {
        let times = self.halt();
        // A thread that cannot start drops its closure, and the VM, here.
        let _ = std::thread::Builder::new()
            .name("vm drop".into())
            .spawn(move || drop(self));
        times
    }

    fn halt(&mut self) -> Result<RunTimes> {
        self.settle_ram();
        if let Some(vcpus) = self.vcpus.take() {
            vcpus.stop();
        }
        // Then the device thread (its handlers wait for their requests),
        // then every disk is flushed and marked clean.
        self.tell_loop(LoopMessage::Stop);
        if let Some(thread) = self.device_thread.take() {
            let _ = thread.join();
        }
        let mut close_errors = Vec::new();
        for (backend, disk) in self.backends.iter().zip(&self.disks) {
            if let Err(e) = backend.close() {
                close_errors.push(format!("{}: {e}", disk.path.display()));
            }
        }
        let first = self
            .serial
            .lock()
            .expect("serial lock")
            .first_byte
            .map(|t| t.duration_since(self.started));
        let setup = self
            .exit
            .entered
            .lock()
            .expect("exit lock")
            .map(|t| t.duration_since(self.started));
        let times = RunTimes {
            first_serial_byte: first,
            setup,
            exit: self.started.elapsed(),
        };
        drop(std::mem::take(&mut self.locks));
        if !close_errors.is_empty() {
            return Err(Error::Disk {
                path: close_errors.join("; "),
                reason: "closing failed".into(),
            });
        }
        Ok(times)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.settle_ram();
        if let Some(vcpus) = self.vcpus.take() {
            vcpus.stop();
        }
        if self.device_thread.is_some() {
            self.tell_loop(LoopMessage::Stop);
            if let Some(thread) = self.device_thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))
}

fn disk_err(disk: &DiskConfig, reason: String) -> Error {
    Error::Disk {
        path: disk.path.display().to_string(),
        reason,
    }
}

/// The lock of an image, taken the way QEMU does, so that neither QEMU
/// nor another vmm writes it while the guest runs (and we refuse one they
/// hold). Taken before the image is opened: opening it for writing may
/// repair it.
fn image_lock_spec(index: usize, disk: &DiskConfig) -> LockSpec {
    let role = if disk.readonly {
        LockRole::ReadOnlyImage
    } else {
        LockRole::WritableImage
    };
    LockSpec {
        disk: index,
        path: disk.path.clone(),
        writable: !disk.readonly,
        role,
    }
}

/// The locks of the other files an open disk reads (its backing chain,
/// which no one may then write or resize) and writes (its data file), as
/// QEMU takes them.
fn file_lock_specs(
    index: usize,
    disk: &DiskConfig,
    opened: &blockdev::backend::OpenedDisk,
) -> Vec<LockSpec> {
    let mut specs = Vec::new();
    for backing in &opened.backing_files {
        specs.push(LockSpec {
            disk: index,
            path: backing.clone(),
            writable: false,
            role: LockRole::ReadOnlyImage,
        });
    }
    if let Some(data_file) = &opened.data_file {
        let role = if disk.readonly {
            LockRole::ReadOnlyDataFile
        } else {
            LockRole::WritableDataFile
        };
        specs.push(LockSpec {
            disk: index,
            path: data_file.clone(),
            writable: !disk.readonly,
            role,
        });
    }
    specs
}

/// Takes the lock `spec` names; the file returned holds it until closed.
fn take_lock(disk: &DiskConfig, spec: &LockSpec) -> Result<std::fs::File> {
    lock_file(disk, &spec.path, spec.writable, spec.role)
}

fn lock_file(
    disk: &DiskConfig,
    path: &std::path::Path,
    writable: bool,
    role: LockRole,
) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| disk_err(disk, format!("Could not open '{}': {e}", path.display())))?;
    crate::sys::lock_image(&file, role).map_err(|reason| {
        if path == disk.path {
            disk_err(disk, reason)
        } else {
            disk_err(disk, format!("'{}': {reason}", path.display()))
        }
    })?;
    Ok(file)
}

/// Opens one disk through blockdev, before any vCPU exists.
fn open_disk(disk: &DiskConfig) -> Result<blockdev::backend::OpenedDisk> {
    let options = blockdev::backend::OpenOptions {
        format: disk.format.map(DiskFormat::image_format),
        read_only: disk.readonly,
        cache: match disk.cache {
            DiskCache::None => blockdev::disk::CacheMode::None,
            DiskCache::Writeback => blockdev::disk::CacheMode::Writeback,
        },
        ..Default::default()
    };
    blockdev::backend::open_with_files(&disk.path, &options)
        .map_err(|e| disk_err(disk, e.to_string()))
}

fn io_err(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.to_string(),
        source,
    }
}
