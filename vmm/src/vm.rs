//! A running VM: KVM with its in-kernel irqchip and PIT, guest memory,
//! the loaded guest, the devices, one thread per vCPU, and the main loop
//! that waits for the guest to reset or power off (or for SIGINT/SIGTERM),
//! stops the vCPUs and closes the disks clean.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot;
use crate::config::{check_counts, VmConfig};
use crate::config::{DiskCache, DiskConfig, DiskFormat};
use crate::cpu;
use crate::devices::event_loop::{self, LoopMessage};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_LEN};
use crate::devices::serial::{SerialPort, SERIAL_PORT, SERIAL_PORT_LEN};
use crate::devices::virtio_mmio::{Interrupt, VirtioMmio, REG_QUEUE_NOTIFY};
use crate::devices::Bus;
use crate::error::{kvm, Error, Result};
use crate::layout::{
    ram_ranges, virtio_mmio_base, KVM_TSS_ADDRESS, SERIAL_GSI, VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE,
};
use crate::sys::{install_kick_handler, kick_signal, ExitSignals, LockRole};

/// Offset of `acpi_rsdp_addr` in boot_params.
const ACPI_RSDP_ADDR_OFFSET: u64 = 0x70;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042, triple fault, or a reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The guest did something the VMM cannot continue from.
    Fault(String),
}

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

/// How the vCPU threads tell the main loop the guest is done.
struct ExitState {
    /// When the boot vCPU first entered the guest.
    entered: Mutex<Option<Instant>>,
    reason: Mutex<Option<VmExit>>,
    event: EventFd,
    stop: AtomicBool,
}

impl ExitState {
    fn finish(&self, exit: VmExit) {
        let mut reason = self.reason.lock().expect("exit lock");
        if reason.is_none() {
            *reason = Some(exit);
        }
        let _ = self.event.write(1);
    }
}

/// Maps guest memory and registers it with KVM.
fn guest_memory(vm: &VmFd, memory: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(memory)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
        .map_err(|e| Error::Memory(format!("mapping {} MiB: {e}", memory >> 20)))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(e.to_string()))?;
        let entry = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, which outlives the VM (the VM fd is dropped first, in
        // `run`), and slots do not overlap.
        unsafe { vm.set_user_memory_region(entry) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// Describes where the guest stopped: registers and the instruction bytes
/// at RIP (through the guest's own page tables).
fn describe_fault(vcpu: &VcpuFd, mem: &GuestMemoryMmap, what: &str) -> String {
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return what.to_string();
    };
    let phys = if sregs.cr0 & 0x8000_0000 != 0 {
        boot::paging::translate(mem, sregs.cr3, regs.rip)
    } else {
        Some(regs.rip)
    };
    let bytes = phys
        .and_then(|p| {
            let mut b = [0u8; 16];
            vm_memory::Bytes::read_slice(mem, &mut b, GuestAddress(p)).ok()?;
            Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .unwrap_or_else(|| "unreadable".into());
    format!(
        "{what} at rip {:#x} (instruction bytes {bytes}), rsp {:#x}, cr0 {:#x}, cr3 {:#x}, cr4 {:#x}, efer {:#x}",
        regs.rip, regs.rsp, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer
    )
}

/// Runs one vCPU until the guest stops or the VMM stops it.
fn vcpu_loop(
    mut vcpu: VcpuFd,
    io: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitState>,
    seccomp: bool,
) {
    if seccomp {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
            exit.finish(VmExit::Fault(e.to_string()));
            return;
        }
    }
    exit.entered
        .lock()
        .expect("exit lock")
        .get_or_insert_with(Instant::now);
    while !exit.stop.load(Ordering::Acquire) {
        let outcome = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                io.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                io.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(VmExit::PowerOff),
            Ok(VcpuExit::Shutdown) => Some(VmExit::Reset),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                _ => VmExit::PowerOff,
            }),
            Ok(VcpuExit::InternalError) => Some(VmExit::Fault(describe_fault(
                &vcpu,
                &mem,
                "KVM internal error (emulation failure)",
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::Fault(format!(
                "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                Some(VmExit::Fault(describe_fault(&vcpu, &mem, &what)))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExit::Fault(format!("KVM_RUN: {e}"))),
        };
        if let Some(reason) = outcome {
            exit.finish(reason);
            return;
        }
    }
}

/// Builds the VM described by `config`, runs it to its end and closes
/// everything; returns why it stopped.
pub fn run(config: &VmConfig) -> Result<(VmExit, RunTimes)> {
    let started = Instant::now();
    check_counts(config.cpus, config.disks.len())?;
    // Disks first: a disk that is missing, locked or corrupt stops us
    // before anything else is set up.
    let mut locks = Vec::new();
    let mut backends = Vec::new();
    for disk in &config.disks {
        locks.push(lock_disk(disk)?);
        let opened = open_disk(disk)?;
        locks.extend(lock_disk_files(disk, &opened)?);
        backends.push(opened.backend);
    }
    let mut signals = ExitSignals::new()?;
    install_kick_handler()?;

    let kvm_fd = Kvm::new().map_err(kvm("opening /dev/kvm"))?;
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    let mem = guest_memory(&vm, config.memory)?;
    // Each disk is also described on the command line, for kernels built
    // with virtio_mmio's command-line option (and the test guest).
    let mut cmdline = config.cmdline.clone();
    for i in 0..backends.len() {
        cmdline.push_str(&format!(
            " virtio_mmio.device=4K@{:#x}:{}",
            virtio_mmio_base(i),
            VIRTIO_FIRST_GSI + i as u32
        ));
    }
    let loaded = boot::load(
        &mem,
        &config.kernel,
        config.initrd.as_deref(),
        cmdline.trim_start(),
        config.memory,
    )?;

    // ACPI tables, and their address in boot_params (acpi_rsdp_addr).
    let rsdp = crate::acpi::write_tables(&mem, config.cpus, backends.len())?;
    vm_memory::Bytes::write_obj(
        &mem,
        rsdp,
        GuestAddress(crate::layout::ZERO_PAGE_START + ACPI_RSDP_ADDR_OFFSET),
    )
    .map_err(|e| Error::Memory(format!("writing acpi_rsdp_addr: {e}")))?;

    let exit = Arc::new(ExitState {
        entered: Mutex::new(None),
        reason: Mutex::new(None),
        event: EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?,
        stop: AtomicBool::new(false),
    });
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?;
    vm.register_irqfd(&serial_irq, SERIAL_GSI)
        .map_err(kvm("KVM_IRQFD (serial)"))?;
    let serial = Arc::new(Mutex::new(SerialPort::new(
        serial_irq,
        Box::new(std::io::stdout()),
    )));
    let reset = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?;
    let mut io = Bus::new("port");
    io.insert(SERIAL_PORT, SERIAL_PORT_LEN, serial.clone());
    io.insert(
        I8042_DATA_PORT,
        I8042_PORT_LEN,
        Arc::new(Mutex::new(I8042::new(
            reset.try_clone().map_err(|e| io_err("eventfd", e))?,
        ))),
    );
    let io = Arc::new(io);

    // The disks' transports, and the device thread that serves them.
    let (loop_tx, loop_rx) = std::sync::mpsc::channel::<LoopMessage>();
    let wake_loop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?;
    let shared_mem = Arc::new(mem.clone());
    let mut mmio = Bus::new("MMIO");
    let queues = config.cpus.clamp(1, 4) as u16;
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
        let base = virtio_mmio_base(i);
        let mut notify = Vec::new();
        for q in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?;
            vm.register_ioevent(
                &evt,
                &kvm_ioctls::IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                u32::from(q),
            )
            .map_err(kvm("KVM_IOEVENTFD"))?;
            notify.push(evt);
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| io_err("eventfd", e))?;
        vm.register_irqfd(&irqfd, VIRTIO_FIRST_GSI + i as u32)
            .map_err(kvm("KVM_IRQFD (virtio)"))?;
        let interrupt = Arc::new(Interrupt {
            status: std::sync::atomic::AtomicU32::new(0),
            irqfd,
        });
        let transport = VirtioMmio::new(
            i,
            device,
            shared_mem.clone(),
            notify,
            interrupt,
            loop_tx.clone(),
            wake_loop.try_clone().map_err(|e| io_err("eventfd", e))?,
        );
        mmio.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)));
    }
    let mmio = Arc::new(mmio);
    let stdin = if config.serial_input {
        Some(std::io::stdin().as_raw_fd())
    } else {
        None
    };
    let config_seccomp = config.seccomp;
    let poll_max = config.poll_max;
    let device_thread = {
        let wake = wake_loop.try_clone().map_err(|e| io_err("eventfd", e))?;
        let serial = serial.clone();
        std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || event_loop::run(loop_rx, wake, serial, stdin, config_seccomp, poll_max))
            .map_err(|e| io_err("starting the device thread", e))?
    };

    let mut vcpus = Vec::new();
    for id in 0..config.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        cpu::configure(
            &kvm_fd,
            &vcpu,
            (id, config.cpus),
            loaded.entry,
            &config.cpuid_mask,
        )?;
        vcpus.push(vcpu);
    }

    let seccomp = config.seccomp;
    let mut threads = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (io, mmio, mem, exit) = (io.clone(), mmio.clone(), mem.clone(), exit.clone());
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu_loop(vcpu, io, mmio, mem, exit, seccomp))
            .map_err(|e| io_err("starting a vCPU thread", e))?;
        threads.push(handle);
    }

    // Wait for the guest's end, a reset from the i8042, or a signal.
    let epoll = Epoll::new().map_err(|e| io_err("epoll", e))?;
    for (fd, token) in [
        (exit.event.as_raw_fd(), 0u64),
        (reset.as_raw_fd(), 1),
        (signals.as_raw_fd(), 2),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| io_err("epoll_ctl", e))?;
    }
    if config.seccomp {
        crate::seccomp::apply(crate::seccomp::ThreadKind::Main)?;
    }
    let mut events = vec![EpollEvent::default(); 4];
    let reason = loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("epoll_wait", e)),
        };
        let mut found = None;
        for ev in &events[..n] {
            match ev.data() {
                0 => found = exit.reason.lock().expect("exit lock").clone(),
                1 => found = Some(VmExit::Reset),
                _ => {
                    if let Some(sig) = signals.take() {
                        found = Some(VmExit::Signal(sig));
                    }
                }
            }
        }
        if let Some(r) = found {
            break r;
        }
    };

    // Stop every vCPU: kick until each thread has left KVM_RUN.
    exit.stop.store(true, Ordering::Release);
    for handle in &threads {
        while !handle.is_finished() {
            let _ = handle.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for handle in threads {
        let _ = handle.join();
    }
    // Then the device thread (its handlers wait for their requests), then
    // every disk is flushed and marked clean.
    if loop_tx.send(LoopMessage::Stop).is_ok() {
        let _ = wake_loop.write(1);
    }
    let _ = device_thread.join();
    drop(mmio);
    let mut close_errors = Vec::new();
    for (backend, disk) in backends.iter().zip(&config.disks) {
        if let Err(e) = backend.close() {
            close_errors.push(format!("{}: {e}", disk.path.display()));
        }
    }
    let first = serial
        .lock()
        .expect("serial lock")
        .first_byte
        .map(|t| t.duration_since(started));
    let setup = exit
        .entered
        .lock()
        .expect("exit lock")
        .map(|t| t.duration_since(started));
    let times = RunTimes {
        first_serial_byte: first,
        setup,
        exit: started.elapsed(),
    };
    drop(vm);
    drop(locks);
    if !close_errors.is_empty() {
        return Err(Error::Disk {
            path: close_errors.join("; "),
            reason: "closing failed".into(),
        });
    }
    Ok((reason, times))
}

fn disk_err(disk: &DiskConfig, reason: String) -> Error {
    Error::Disk {
        path: disk.path.display().to_string(),
        reason,
    }
}

/// Locks an image the way QEMU does, so that neither QEMU nor another vmm
/// writes it while the guest runs (and we refuse one they hold). The file
/// returned holds the locks until it is closed. Taken before the image is
/// opened: opening it for writing may repair it.
fn lock_disk(disk: &DiskConfig) -> Result<std::fs::File> {
    let role = if disk.readonly {
        LockRole::ReadOnlyImage
    } else {
        LockRole::WritableImage
    };
    lock_file(disk, &disk.path, !disk.readonly, role)
}

/// Locks the other files an open disk reads (its backing chain, which no
/// one may then write or resize) and writes (its data file), as QEMU does.
fn lock_disk_files(
    disk: &DiskConfig,
    opened: &blockdev::backend::OpenedDisk,
) -> Result<Vec<std::fs::File>> {
    let mut files = Vec::new();
    for backing in &opened.backing_files {
        files.push(lock_file(disk, backing, false, LockRole::ReadOnlyImage)?);
    }
    if let Some(data_file) = &opened.data_file {
        let role = if disk.readonly {
            LockRole::ReadOnlyDataFile
        } else {
            LockRole::WritableDataFile
        };
        files.push(lock_file(disk, data_file, !disk.readonly, role)?);
    }
    Ok(files)
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
        format: disk.format.map(|f| match f {
            DiskFormat::Qcow2 => qcow::fs::Format::Qcow2,
            DiskFormat::Raw => qcow::fs::Format::Raw,
        }),
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
