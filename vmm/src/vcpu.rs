//! The vCPU threads and how the VMM stops them: one thread per vCPU runs
//! KVM_RUN and routes port and MMIO exits to the buses; a [`VcpuGate`]
//! shared with the controller parks them (pause), lets them run (resume)
//! or ends them (stop).
//!
//! Taking a vCPU out of KVM_RUN: the controller sets what it wants on the
//! gate, then re-sends the kick signal to every thread until each has
//! parked or ended (a signal that lands just before KVM_RUN would
//! otherwise be lost, and the thread would stay in the guest until its
//! next exit). A thread that leaves KVM_RUN to park first runs KVM_RUN once
//! more with `immediate_exit` set: KVM finishes the port or MMIO access
//! whose data the thread just supplied and returns at once, so a paused
//! vCPU holds no half-done instruction.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot;
use crate::devices::Bus;
use crate::error::{Error, Result};
use crate::sys::kick_signal;
use crate::vcpu_capture::VcpuCapture;
use crate::vcpu_pause_times::{LeftOn, PauseClock, PauseTimes};

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

/// How the vCPU threads (and devices) tell the controller the guest is done.
pub struct ExitState {
    /// When the boot vCPU first entered the guest.
    pub entered: Mutex<Option<Instant>>,
    reason: Mutex<Option<VmExit>>,
    /// Written when a reason is set.
    pub event: EventFd,
}

impl ExitState {
    /// A state with no reason yet.
    pub fn new() -> Result<Self> {
        Ok(ExitState {
            entered: Mutex::new(None),
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "eventfd".into(),
                source,
            })?,
        })
    }

    /// Records why the guest stopped (the first reason wins) and wakes the
    /// controller.
    pub fn finish(&self, exit: VmExit) {
        let mut reason = self.reason.lock().expect("exit lock");
        if reason.is_none() {
            *reason = Some(exit);
        }
        let _ = self.event.write(1);
    }

    /// The reason recorded, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason.lock().expect("exit lock").clone()
    }

    /// Forgets the last VM's end, for the next VM built with this state.
    pub fn clear(&self) {
        *self.reason.lock().expect("exit lock") = None;
        *self.entered.lock().expect("exit lock") = None;
        let _ = self.event.read();
    }
}

/// What the controller wants of the vCPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Run,
    Pause,
    Stop,
}

struct GateState {
    want: Want,
    /// Threads that will not enter the guest again before a resume: parked,
    /// or out of the guest and taking a capture on their way to park.
    parked: usize,
    /// The capture the current pause asked for, if any.
    capture: Option<Arc<VcpuCapture>>,
}

/// The vCPU threads' shared switch.
pub struct VcpuGate {
    state: Mutex<GateState>,
    changed: Condvar,
    /// Mirrors `want != Run`, read by the threads between exits without
    /// taking the lock.
    leave: AtomicBool,
    /// When each vCPU left the guest for the current pause.
    clock: PauseClock,
    /// Asks of [`VcpuSet::warm_threads`], counted: a thread that has seen
    /// fewer warms its stack and heap at its next exit.
    warm: AtomicU32,
}

impl VcpuGate {
    fn new(paused: bool, vcpus: usize) -> Self {
        VcpuGate {
            state: Mutex::new(GateState {
                want: if paused { Want::Pause } else { Want::Run },
                parked: 0,
                capture: None,
            }),
            changed: Condvar::new(),
            leave: AtomicBool::new(paused),
            clock: PauseClock::new(vcpus),
            warm: AtomicU32::new(0),
        }
    }

    fn set(&self, want: Want, capture: Option<Arc<VcpuCapture>>) {
        let mut state = self.state.lock().expect("gate lock");
        state.want = want;
        state.capture = capture;
        self.leave.store(want != Want::Run, Ordering::Release);
        self.changed.notify_all();
    }

    /// Counts the calling vCPU thread, just out of the guest, as parked
    /// while the controller wants a pause (it parks next), and begins its
    /// capture if the pause asked for one; whether it was counted, and
    /// the capture.
    fn leave_guest(&self, id: usize) -> (bool, Option<Arc<VcpuCapture>>) {
        let mut state = self.state.lock().expect("gate lock");
        if state.want != Want::Pause {
            return (false, None);
        }
        state.parked += 1;
        let capture = state.capture.clone().filter(|c| c.begin(id));
        self.changed.notify_all();
        (true, capture)
    }

    /// Parks the calling vCPU thread while the controller wants a pause
    /// (`counted`: [`VcpuGate::leave_guest`] counted it already); whether
    /// it should run on (false: stop).
    fn wait_to_run(&self, counted: bool) -> bool {
        let mut state = self.state.lock().expect("gate lock");
        let mut counted = counted;
        if state.want == Want::Pause && !counted {
            state.parked += 1;
            counted = true;
            self.changed.notify_all();
        }
        while state.want == Want::Pause {
            state = self.changed.wait(state).expect("gate lock");
        }
        if counted {
            state.parked -= 1;
        }
        state.want == Want::Run
    }

    /// The capture the current pause asked for, for the leaving run to
    /// know whether to store the registers.
    fn capture(&self) -> Option<Arc<VcpuCapture>> {
        self.state.lock().expect("gate lock").capture.clone()
    }

    fn parked(&self) -> usize {
        self.state.lock().expect("gate lock").parked
    }

    /// Waits until `count` threads are parked or `timeout` has passed
    /// (woken by each thread that parks); whether they are.
    fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let state = self.state.lock().expect("gate lock");
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.parked < count)
            .expect("gate lock");
        state.parked >= count
    }
}

/// What a vCPU thread needs besides its vCPU.
pub struct VcpuContext {
    /// Port I/O devices.
    pub io: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Guest memory (for fault reports).
    pub mem: GuestMemoryMmap,
    /// Where the guest's end is reported.
    pub exit: Arc<ExitState>,
    /// Whether to apply the vCPU seccomp filter.
    pub seccomp: bool,
}

/// The running vCPU threads.
pub struct VcpuSet {
    gate: Arc<VcpuGate>,
    threads: Vec<JoinHandle<()>>,
    /// Each vCPU's fd: its thread holds the lock while it is out of the
    /// gate, so the controller takes it only while the vCPUs are paused.
    fds: Vec<Arc<Mutex<VcpuFd>>>,
}

/// How long pausing waits for the vCPUs before it reports failure.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long pausing waits for the vCPUs to park before kicking again.
const KICK_INTERVAL: Duration = Duration::from_micros(200);

impl VcpuSet {
    /// Starts one thread per vCPU (`vcpu0`, `vcpu1`, ...), parked from the
    /// start when `paused`.
    pub fn start(vcpus: Vec<VcpuFd>, context: &VcpuContext, paused: bool) -> Result<Self> {
        Self::start_on(vcpus, Vec::new(), context, paused)
    }

    /// As [`VcpuSet::start`], each vCPU's loop run on the thread of
    /// `ready` at its index (started ahead, [`crate::kvm_shell`]) when
    /// there is one.
    pub fn start_on(
        vcpus: Vec<VcpuFd>,
        ready: Vec<crate::ready_thread::ReadyThread>,
        context: &VcpuContext,
        paused: bool,
    ) -> Result<Self> {
        let mut ready = ready.into_iter();
        let fds: Vec<Arc<Mutex<VcpuFd>>> =
            vcpus.into_iter().map(|v| Arc::new(Mutex::new(v))).collect();
        let gate = Arc::new(VcpuGate::new(paused, fds.len()));
        let mut threads = Vec::new();
        for (id, vcpu) in fds.iter().cloned().enumerate() {
            let ctx = VcpuContext {
                io: context.io.clone(),
                mmio: context.mmio.clone(),
                mem: context.mem.clone(),
                exit: context.exit.clone(),
                seccomp: context.seccomp,
            };
            let gate = gate.clone();
            let handle =
                crate::ready_thread::run_on(ready.next(), &thread_name(id as u32), move || {
                    vcpu_loop(id, vcpu, ctx, gate)
                })?;
            threads.push(handle);
        }
        Ok(VcpuSet { gate, threads, fds })
    }

    /// Each vCPU's fd, by id; lock one only while the set is paused.
    pub fn fds(&self) -> &[Arc<Mutex<VcpuFd>>] {
        &self.fds
    }

    /// Takes every vCPU out of KVM_RUN and parks it.
    pub fn pause(&self) -> Result<()> {
        self.pause_with(None)
    }

    /// [`VcpuSet::pause`], each vCPU thread that leaves the guest for it
    /// reading its own state into `capture` on its way to park
    /// ([`crate::vcpu_capture`]); returns once every vCPU is out of the
    /// guest, with captures still under way (their fds' locks held until
    /// they are done).
    pub fn pause_capturing(&self, capture: Arc<VcpuCapture>) -> Result<()> {
        self.pause_with(Some(capture))
    }

    /// When each vCPU left the guest for the last pause, and the kicks it
    /// took.
    pub fn last_pause(&self) -> PauseTimes {
        self.gate.clock.times()
    }

    fn pause_with(&self, capture: Option<Arc<VcpuCapture>>) -> Result<()> {
        // Traced: the vCPU threads' time on a CPU and waiting for one
        // over the pause (whether a slow one was in the guest or waiting).
        let sched = crate::vcpu_pause_times::tracing().then(|| {
            crate::migration::sched::WindowClocks::start(
                crate::migration::sched::ThreadClock::named("vcpu"),
            )
        });
        self.gate.clock.start();
        self.gate.set(Want::Pause, capture);
        let start = Instant::now();
        loop {
            let finished = self.threads.iter().filter(|t| t.is_finished()).count();
            if self.gate.parked() + finished >= self.threads.len() {
                if let Some(sched) = sched {
                    crate::vcpu_pause_times::trace_paused(
                        &sched,
                        start.elapsed(),
                        &self.last_pause(),
                    );
                }
                return Ok(());
            }
            if start.elapsed() > PAUSE_TIMEOUT {
                return Err(Error::GuestFault(format!(
                    "vCPUs did not pause within {} s",
                    PAUSE_TIMEOUT.as_secs()
                )));
            }
            self.kick();
            let kicked = self.gate.clock.kicked();
            if crate::vcpu_pause_times::tracing() {
                eprintln!(
                    "vmm: pause trace: kick round sent {:.3} ms after the start",
                    kicked.as_secs_f64() * 1000.0
                );
            }
            // Woken as soon as the last one parks; the kick is sent again
            // after KICK_INTERVAL (a signal that lands just before
            // KVM_RUN is lost).
            let running = self.threads.len() - finished;
            self.gate.wait_parked(running, KICK_INTERVAL);
        }
    }

    /// Has each running vCPU thread touch its stack and heap
    /// ([`crate::migration::prefault`]) at its next exit, which a kick
    /// brings about at once, for a migration's paused window ahead (where
    /// each reads its own state). Asked at a migration's start, so that
    /// VMs never migrated do not pay it; a thread whose kick is lost
    /// (sent just before it entered the guest) warms at its next exit.
    pub fn warm_threads(&self) {
        self.gate.warm.fetch_add(1, Ordering::Release);
        self.kick();
    }

    /// Whether every vCPU thread still runs (none ended on a guest fault
    /// or exit): state can then be set into the set's vCPUs in place.
    pub fn all_alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.gate.set(Want::Run, None);
    }

    fn kick(&self) {
        for handle in &self.threads {
            if !handle.is_finished() {
                let _ = handle.kill(kick_signal());
            }
        }
    }

    /// Ends every vCPU thread and waits for them.
    pub fn stop(self) {
        self.gate.set(Want::Stop, None);
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        for handle in self.threads {
            let _ = handle.join();
        }
    }
}

/// The name of vCPU `id`'s thread.
pub fn thread_name(id: u32) -> String {
    format!("vcpu{id}")
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

/// Runs one vCPU until the guest stops or the controller stops it.
fn vcpu_loop(id: usize, shared: Arc<Mutex<VcpuFd>>, ctx: VcpuContext, gate: Arc<VcpuGate>) {
    // glibc's one-time reads done before the filter forbids them.
    crate::migration::prefault::prime_allocator();
    if ctx.seccomp {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
            ctx.exit.finish(VmExit::Fault(e.to_string()));
            return;
        }
    }
    // Whether the thread has been in KVM_RUN (and so, when it is to
    // park, has an exit's access to finish first); not at a paused start.
    let mut has_run = false;
    // The warm requests this thread has met (`VcpuSet::warm_threads`).
    let mut warmed = 0;
    loop {
        let wanted = gate.warm.load(Ordering::Acquire);
        if wanted != warmed {
            warmed = wanted;
            crate::migration::prefault::warm_thread();
        }
        if gate.leave.load(Ordering::Acquire) {
            let counted = has_run && leave_guest(id, &shared, &gate);
            if !gate.wait_to_run(counted) {
                return;
            }
        }
        let mut vcpu = shared.lock().expect("vCPU fd lock");
        ctx.exit
            .entered
            .lock()
            .expect("exit lock")
            .get_or_insert_with(Instant::now);
        has_run = true;
        let run = vcpu.run();
        if gate.leave.load(Ordering::Acquire) {
            let interrupted = matches!(&run, Err(e) if e.errno() == libc::EINTR);
            let left = if interrupted {
                LeftOn::Kick
            } else {
                LeftOn::OwnExit
            };
            gate.clock.note_out(id, left);
        }
        let outcome = match run {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.io.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.io.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio.write(addr, data);
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
                &ctx.mem,
                "KVM internal error (emulation failure)",
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::Fault(format!(
                "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(other) => {
                let what = format!("unexpected exit {other:?}");
                Some(VmExit::Fault(describe_fault(&vcpu, &ctx.mem, &what)))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExit::Fault(format!("KVM_RUN: {e}"))),
        };
        if let Some(reason) = outcome {
            ctx.exit.finish(reason);
            return;
        }
    }
}

/// Takes the calling vCPU thread, back from KVM_RUN, out of the guest for
/// a pause: finishes the access just handled (KVM completes it, then
/// returns at once with EINTR), the run storing the registers into
/// `kvm_run` when the pause asked for a capture, counts itself out and
/// takes the capture; whether it was counted ([`VcpuGate::leave_guest`]).
fn leave_guest(id: usize, shared: &Mutex<VcpuFd>, gate: &VcpuGate) -> bool {
    // Out already when the pause began (its last exit came before the
    // controller's word): noted now, unless the exit noted it.
    gate.clock.note_out(id, LeftOn::OwnExit);
    let mut vcpu = shared.lock().expect("vCPU fd lock");
    let sync = gate.capture().is_some_and(|c| c.wants_sync_regs());
    if sync {
        for reg in crate::vcpu_capture::SYNC_REGS {
            vcpu.set_sync_valid_reg(reg);
        }
    }
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    if sync {
        for reg in crate::vcpu_capture::SYNC_REGS {
            vcpu.clear_sync_valid_reg(reg);
        }
    }
    let (counted, capture) = gate.leave_guest(id);
    if let Some(capture) = capture {
        // Without the registers stored by this run (a capture asked for
        // after it started) they are read by ioctl.
        capture.take_on_vcpu(id, &vcpu, sync);
    }
    if counted && crate::vcpu_pause_times::tracing() {
        trace_leaving(id, &vcpu, gate);
    }
    counted
}

/// `VMM_PAUSE_TRACE`'s line for a vCPU just counted out: when it left,
/// on what, and where the guest was (RIP, privilege level).
fn trace_leaving(id: usize, vcpu: &VcpuFd, gate: &VcpuGate) {
    let out = match gate.clock.out_of(id) {
        Some((after, left)) => format!(
            "out {:.3} ms after the start ({left:?}), {} kicks so far",
            after.as_secs_f64() * 1000.0,
            gate.clock.times().kicks
        ),
        None => "out before the start".into(),
    };
    let (rip, cpl) = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => (format!("{:#x}", regs.rip), sregs.cs.dpl.to_string()),
        _ => ("unreadable".into(), "unreadable".into()),
    };
    eprintln!("vmm: pause trace: vcpu{id} {out}, rip {rip}, cpl {cpl}");
}
