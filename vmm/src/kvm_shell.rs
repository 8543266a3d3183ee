//! A KVM VM made ahead of its devices: the VM fd with its in-kernel
//! irqchip and PIT, guest RAM registered as its memory slots and the
//! vCPUs created (not yet configured). Making one takes milliseconds to
//! tens of milliseconds (KVM_CREATE_VM on a nested host above all), none
//! of which needs the disks: a migration's destination makes it as soon
//! as the configuration arrives, while RAM streams in, so that the switch
//! (the source paused) only opens the disks, wires the devices and sets
//! the state ([`crate::vm::Vm::from_migration`]). The vCPU threads and
//! the device thread are started then too, each waiting for its work
//! ([`crate::ready_thread`]).

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::error::{kvm, Result};
use crate::layout::KVM_TSS_ADDRESS;
use crate::ready_thread::ReadyThread;

/// KVM's VM, its RAM and its vCPUs, with no device yet.
pub struct KvmShell {
    // Field order is drop order: the vCPUs before the VM fd.
    /// One thread per vCPU, started and waiting for its vCPU's loop.
    pub(crate) vcpu_threads: Vec<ReadyThread>,
    /// The device thread, started and waiting for its loop.
    pub(crate) device_thread: Option<ReadyThread>,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vm: VmFd,
    pub(crate) kvm: Kvm,
}

impl KvmShell {
    /// Opens KVM, creates the VM (`create_vm`), registers `mem` as its
    /// RAM, creates `cpus` vCPUs (`cpus` checked by the caller against
    /// [`crate::config::check_counts`]) and starts their threads and the
    /// device thread, waiting.
    pub fn create(cpus: u32, mem: GuestMemoryMmap) -> Result<KvmShell> {
        let kvm_fd = Kvm::new().map_err(kvm("opening /dev/kvm"))?;
        let vm = create_vm(&kvm_fd)?;
        crate::vm::register_memory(&vm, &mem, 0)?;
        let mut vcpus = Vec::with_capacity(cpus as usize);
        let mut vcpu_threads = Vec::with_capacity(cpus as usize);
        for id in 0..cpus {
            vcpus.push(
                vm.create_vcpu(u64::from(id))
                    .map_err(kvm("KVM_CREATE_VCPU"))?,
            );
            vcpu_threads.push(ReadyThread::spawn(&crate::vcpu::thread_name(id))?);
        }
        Ok(KvmShell {
            vcpu_threads,
            device_thread: Some(ReadyThread::spawn(crate::vm::DEVICE_THREAD)?),
            vcpus,
            mem,
            vm,
            kvm: kvm_fd,
        })
    }

    /// Guest RAM (zeroed when made; registered with KVM).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// How many vCPUs it holds.
    pub fn cpus(&self) -> u32 {
        self.vcpus.len() as u32
    }
}

/// Creates a KVM VM with its TSS, in-kernel irqchip and PIT (the order
/// KVM wants: the irqchip before any vCPU).
pub(crate) fn create_vm(kvm_fd: &Kvm) -> Result<VmFd> {
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    Ok(vm)
}
