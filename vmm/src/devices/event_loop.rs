//! The device thread: waits on every active virtio queue's notify eventfd
//! (written by KVM through ioeventfds) and the queue's other fd (a disk
//! backend's completion eventfd, a receive queue's tap while the guest
//! has given buffers; see `blockdev::virtio::served`), runs the queue
//! handlers of every device model alike, raises interrupts, and feeds
//! terminal input to the serial port. A bad request costs the guest an IOERR or a
//! dropped chain, never this thread: handler errors are logged and the
//! loop goes on. While requests are in flight it spins on the backends'
//! completion rings and the queues' available rings for a moment before
//! it sleeps (adaptive polling, as QEMU's iothreads do; see
//! `blockdev::poll`). The guest's kicks (VM exits) stay off while the loop
//! runs; they are turned back on just before it sleeps, and what the guest
//! made available meanwhile is taken instead of sleeping.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use blockdev::poll::AdaptivePoll;
use blockdev::virtio::served::ServedQueue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::serial::SerialPort;
use super::virtio_mmio::Interrupt;

/// A queue handler of any device model.
pub type Handler = Box<dyn ServedQueue>;

/// What the transports and the VM tell the loop.
pub enum LoopMessage {
    /// A device was activated: serve its queues.
    Add {
        /// The device's slot.
        device: usize,
        /// The device's kind, for log lines ("virtio-net").
        kind: &'static str,
        /// One handler per ready queue.
        handlers: Vec<Handler>,
        /// Its interrupt.
        interrupt: Arc<Interrupt>,
    },
    /// The driver reset a device: drop its handlers (waiting for their
    /// backend requests).
    Remove {
        /// The device's slot.
        device: usize,
    },
    /// The VM is pausing: stop taking requests from the queues, wait for
    /// those in flight to complete, then answer on the channel.
    Pause(std::sync::mpsc::Sender<()>),
    /// [`LoopMessage::Pause`] (a no-op when paused already), then every
    /// device's [`PausedDevices`] in the same answer: a migration's
    /// paused window makes one round trip to this thread, not one per
    /// device and kind of state.
    PauseAndCollect(std::sync::mpsc::Sender<PausedDevices>),
    /// Answer once no queue has a request in flight (at once when
    /// paused): a migration starts its paused window at such a moment
    /// rather than wait in it for a guest's flush. The loop answers as it
    /// goes to sleep with nothing in flight; a guest that always has
    /// requests in flight is never answered (the asker bounds its wait).
    WhenIdle(std::sync::mpsc::Sender<()>),
    /// The VM resumes: take requests again.
    Resume,
    /// For a snapshot of a paused VM: each served queue of `device` as
    /// (queue index, next_avail, next_used).
    Positions {
        /// The device's slot.
        device: usize,
        /// Where the positions go.
        reply: std::sync::mpsc::Sender<Vec<(u16, u16, u16)>>,
    },
    /// For a snapshot of a paused VM: what `device`'s served queues hold
    /// beyond their positions (a virtio-net device's stashed receive
    /// chains by queue index, and the pairs its control queue set).
    HeldState {
        /// The device's slot.
        device: usize,
        /// Where the state goes.
        reply: std::sync::mpsc::Sender<HeldState>,
    },
    /// The VM is stopping: drop everything and return.
    Stop,
}

/// What a device's served queues hold beyond their ring positions.
#[derive(Debug, Default)]
pub struct HeldState {
    /// Each queue holding chains: (queue index, heads oldest first).
    pub stashed: Vec<(u16, Vec<u16>)>,
    /// The queue pairs a control queue set, if the device has one served.
    pub active_pairs: Option<u16>,
}

/// What every device's served queues hold once paused: their positions
/// and their [`HeldState`], by device slot.
#[derive(Debug, Default)]
pub struct PausedDevices {
    /// Each served queue as (device slot, queue index, next_avail,
    /// next_used).
    pub positions: Vec<(usize, u16, u16, u16)>,
    /// Each device's held state, for the devices that hold any.
    pub held: Vec<(usize, HeldState)>,
}

impl PausedDevices {
    /// `device`'s queues as (queue index, next_avail, next_used), as
    /// [`LoopMessage::Positions`] answers.
    pub fn positions_of(&self, device: usize) -> Vec<(u16, u16, u16)> {
        self.positions
            .iter()
            .filter(|p| p.0 == device)
            .map(|&(_, index, avail, used)| (index, avail, used))
            .collect()
    }

    /// `device`'s held state, as [`LoopMessage::HeldState`] answers (taken
    /// out: each device's state is saved once).
    pub fn take_held(&mut self, device: usize) -> HeldState {
        match self.held.iter().position(|h| h.0 == device) {
            Some(at) => self.held.swap_remove(at).1,
            None => HeldState::default(),
        }
    }
}

const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_STDIN: u64 = u64::MAX - 1;

/// Lines logged per queue about refused requests before going quiet.
const REFUSED_LOG_LIMIT: u32 = 8;

struct Served {
    /// Its key in the loop's map (and epoll tokens).
    slot: u64,
    refused_logged: u32,
    device: usize,
    kind: &'static str,
    handler: Handler,
    interrupt: Arc<Interrupt>,
    /// The handler's other fd as registered with epoll now.
    event_fd: Option<RawFd>,
}

/// Runs the loop until [`LoopMessage::Stop`]. A loop `start_paused` (the
/// VM is built paused: restored, reverted, migrated in or booted paused)
/// serves no queue until [`LoopMessage::Resume`]: restored devices are
/// added then, and their queues taken at resume, not while the VM is
/// reported paused.
pub fn run(
    messages: Receiver<LoopMessage>,
    wake: EventFd,
    serial: Arc<Mutex<SerialPort>>,
    stdin: Option<RawFd>,
    seccomp: bool,
    poll_max: std::time::Duration,
    start_paused: bool,
) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vmm: device loop: epoll: {e}");
            return;
        }
    };
    if seccomp {
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Devices) {
            eprintln!("vmm: device loop: {e}");
            return;
        }
    }
    let add = |fd: RawFd, token: u64| {
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            eprintln!("vmm: device loop: epoll_ctl: {e}");
        }
    };
    add(wake.as_raw_fd(), TOKEN_WAKE);
    // A regular file or /dev/null cannot be polled: no input then.
    let stdin = stdin.filter(|&fd| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, TOKEN_STDIN),
            )
            .is_ok()
    });
    // Slot -> handler; tokens are slot * 2 (notify) and slot * 2 + 1
    // (the handler's other fd).
    let mut served: HashMap<u64, Served> = HashMap::new();
    let mut next_slot = 0u64;
    let mut events = vec![EpollEvent::default(); 64];
    let mut poll = AdaptivePoll::new(poll_max);
    // While paused, no notify fd is registered and no queue served; each
    // registration is made once, at Add (running) or at Resume (paused):
    // a second EPOLL_CTL_ADD of the same fd fails with EEXIST.
    let mut paused = start_paused;
    // Those waiting for a moment with no request in flight.
    let mut idle_waiters: Vec<std::sync::mpsc::Sender<()>> = Vec::new();
    loop {
        let busy = !paused && served.values().any(|s| s.handler.worth_polling());
        let ready = |s: &mut Served| s.handler.event_ready() || s.handler.has_available();
        if busy && poll.run(|| served.values_mut().any(ready)) {
            for s in served.values_mut() {
                if s.handler.event_ready() {
                    serve(s, Event::Completion);
                }
                if s.handler.has_available() {
                    serve(s, Event::Available);
                }
                track_event_fd(&epoll, s);
            }
            continue;
        }
        // The queues run with the guest's kicks off (the loop polls their
        // rings); turn them on, and take what came meanwhile instead of
        // sleeping. A queue that takes nothing (a broken ring) does not
        // keep the loop awake: its next kick will.
        let mut took = false;
        for s in served.values_mut().filter(|_| !paused) {
            match s.handler.prepare_to_sleep() {
                Ok(true) => {
                    let before = s.handler.next_avail();
                    serve(s, Event::Available);
                    track_event_fd(&epoll, s);
                    took |= s.handler.next_avail() != before;
                }
                // An interrupt deferred while the queue was polled is
                // decided as it goes to sleep.
                Ok(false) if s.handler.signals_before_sleep() => raise_if_due(s),
                Ok(false) => {}
                Err(e) => eprintln!(
                    "vmm: {} {} queue {}: {e}",
                    s.kind,
                    s.device,
                    s.handler.index()
                ),
            }
        }
        if took {
            continue;
        }
        if !idle_waiters.is_empty()
            && (paused || served.values().all(|s| s.handler.in_flight() == 0))
        {
            for waiter in idle_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        let sleep = std::time::Instant::now();
        let waited = epoll.wait(-1, &mut events);
        if busy {
            poll.slept(sleep.elapsed());
        }
        let n = match waited {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("vmm: device loop: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            if paused && ev.data() < TOKEN_STDIN {
                // A kick or tap frame that raced the pause (the queues
                // were drained): taken at resume.
                continue;
            }
            match ev.data() {
                TOKEN_WAKE => {
                    let _ = wake.read();
                    while let Ok(msg) = messages.try_recv() {
                        match msg {
                            LoopMessage::Add {
                                device,
                                kind,
                                handlers,
                                interrupt,
                            } => {
                                for mut handler in handlers {
                                    handler.set_polling(true);
                                    let slot = next_slot;
                                    next_slot += 1;
                                    if !paused {
                                        add(handler.notify_fd(), slot * 2);
                                    }
                                    served.insert(
                                        slot,
                                        Served {
                                            slot,
                                            refused_logged: 0,
                                            device,
                                            kind,
                                            handler,
                                            interrupt: interrupt.clone(),
                                            event_fd: None,
                                        },
                                    );
                                    // The driver may have queued requests
                                    // before DRIVER_OK took effect here
                                    // (taken at Resume while paused).
                                    if let Some(s) = served.get_mut(&slot).filter(|_| !paused) {
                                        serve(s, Event::Notify);
                                        track_event_fd(&epoll, s);
                                    }
                                }
                            }
                            LoopMessage::Remove { device } => {
                                let slots: Vec<u64> = served
                                    .iter()
                                    .filter(|(_, s)| s.device == device)
                                    .map(|(&k, _)| k)
                                    .collect();
                                for slot in slots {
                                    if let Some(s) = served.remove(&slot) {
                                        let fds = [Some(s.handler.notify_fd()), s.event_fd];
                                        for fd in fds.into_iter().flatten() {
                                            let _ = epoll.ctl(
                                                ControlOperation::Delete,
                                                fd,
                                                EpollEvent::default(),
                                            );
                                        }
                                    }
                                }
                            }
                            LoopMessage::Pause(done) if paused => {
                                let _ = done.send(());
                            }
                            LoopMessage::Pause(done) => {
                                paused = true;
                                pause_all(&epoll, &mut served);
                                let _ = done.send(());
                            }
                            LoopMessage::PauseAndCollect(reply) => {
                                if !paused {
                                    paused = true;
                                    pause_all(&epoll, &mut served);
                                }
                                let _ = reply.send(collect(&served));
                            }
                            // Answered before the loop next sleeps.
                            LoopMessage::WhenIdle(reply) => idle_waiters.push(reply),
                            // Not paused: every fd is registered already.
                            LoopMessage::Resume if !paused => {}
                            LoopMessage::Resume => {
                                paused = false;
                                for (&slot, s) in served.iter_mut() {
                                    add(s.handler.notify_fd(), slot * 2);
                                    serve(s, Event::Notify);
                                    track_event_fd(&epoll, s);
                                }
                            }
                            LoopMessage::Positions { device, reply } => {
                                let positions = collect(&served).positions_of(device);
                                let _ = reply.send(positions);
                            }
                            LoopMessage::HeldState { device, reply } => {
                                let held = collect(&served).take_held(device);
                                let _ = reply.send(held);
                            }
                            LoopMessage::Stop => return,
                        }
                    }
                }
                TOKEN_STDIN => {
                    let mut buf = [0u8; 64];
                    let fd = stdin.expect("stdin token only with stdin");
                    match std::io::stdin().read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        }
                        Ok(n) => serial.lock().expect("serial lock").input(&buf[..n]),
                    }
                }
                token => {
                    let mut pairs_changed = None;
                    if let Some(s) = served.get_mut(&(token / 2)) {
                        let event = if token % 2 == 1 {
                            Event::Completion
                        } else {
                            Event::Notify
                        };
                        serve(s, event);
                        track_event_fd(&epoll, s);
                        // A NIC's control queue may have attached or
                        // detached tap queues (VQ_PAIRS_SET): its
                        // receive queues start or stop waiting on them.
                        pairs_changed = s.handler.active_pairs().map(|_| s.device);
                    }
                    if let Some(device) = pairs_changed {
                        for other in served.values_mut().filter(|o| o.device == device) {
                            track_event_fd(&epoll, other);
                        }
                    }
                }
            }
        }
    }
}

/// Stops serving every queue: its kicks and other fd unregistered, its
/// requests in flight completed.
fn pause_all(epoll: &Epoll, served: &mut HashMap<u64, Served>) {
    for s in served.values_mut() {
        let _ = epoll.ctl(
            ControlOperation::Delete,
            s.handler.notify_fd(),
            EpollEvent::default(),
        );
        drain(s);
        // Nothing is in flight now: a tap stays unread until resume.
        if let Some(fd) = s.event_fd.take() {
            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }
}

/// Every served queue's positions and every device's held state.
fn collect(served: &HashMap<u64, Served>) -> PausedDevices {
    let mut devices = PausedDevices {
        positions: Vec::with_capacity(served.len()),
        held: Vec::new(),
    };
    for s in served.values() {
        let h = &s.handler;
        devices
            .positions
            .push((s.device, h.index(), h.next_avail(), h.next_used()));
        let stashed = h.stashed_heads();
        let pairs = h.active_pairs();
        if stashed.is_none() && pairs.is_none() {
            continue;
        }
        let at = match devices.held.iter().position(|d| d.0 == s.device) {
            Some(at) => at,
            None => {
                devices.held.push((s.device, HeldState::default()));
                devices.held.len() - 1
            }
        };
        let held = &mut devices.held[at].1;
        if let Some(heads) = stashed {
            held.stashed.push((h.index(), heads));
        }
        if let Some(pairs) = pairs {
            held.active_pairs = Some(pairs);
        }
    }
    devices
}

/// Brings the epoll registration of the queue's other fd in line with
/// what the handler wants now (a receive queue out of buffers stops
/// waiting on its tap, which stays readable, until the guest kicks).
fn track_event_fd(epoll: &Epoll, s: &mut Served) {
    let wanted = s.handler.event_fd();
    if wanted == s.event_fd {
        return;
    }
    if let Some(fd) = s.event_fd.take() {
        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
    if let Some(fd) = wanted {
        let token = s.slot * 2 + 1;
        match epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            Ok(()) => s.event_fd = Some(fd),
            Err(e) => eprintln!("vmm: device loop: epoll_ctl: {e}"),
        }
    }
}

/// Waits until none of the queue's requests is in flight, returning each
/// to the guest as it completes.
fn drain(s: &mut Served) {
    while s.handler.in_flight() > 0 {
        if let Err(e) = s.handler.wait_and_complete() {
            eprintln!(
                "vmm: {} {} queue {}: draining: {e}",
                s.kind,
                s.device,
                s.handler.index()
            );
            break;
        }
    }
    match s.handler.take_interrupt() {
        Ok(true) => s.interrupt.used_buffers(),
        Ok(false) => {}
        Err(e) => eprintln!("vmm: {} {}: {e}", s.kind, s.device),
    }
}

/// Why a queue is served.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// Its notify eventfd (the guest's kick) is readable.
    Notify,
    /// Its other fd is readable (backend completions, tap frames), or
    /// completions wait.
    Completion,
    /// Polling found chains on its available ring.
    Available,
}

fn serve(s: &mut Served, event: Event) {
    let outcome = match event {
        Event::Completion => s.handler.handle_event(),
        Event::Notify => s.handler.handle_queue_notify(),
        Event::Available => s.handler.process_queue(),
    };
    if let Err(e) = outcome {
        eprintln!(
            "vmm: {} {} queue {}: {e}",
            s.kind,
            s.device,
            s.handler.index()
        );
    }
    let refused = s.handler.take_refused();
    if refused > 0 && s.refused_logged < REFUSED_LOG_LIMIT {
        s.refused_logged += 1;
        eprintln!(
            "vmm: {} {} queue {}: refused {refused} malformed request(s) from the guest{}",
            s.kind,
            s.device,
            s.handler.index(),
            if s.refused_logged == REFUSED_LOG_LIMIT {
                " (not logged again)"
            } else {
                ""
            }
        );
    }
    raise_if_due(s);
}

/// Raises the device's interrupt if the queue decided on one.
fn raise_if_due(s: &Served) {
    match s.handler.take_interrupt() {
        Ok(true) => s.interrupt.used_buffers(),
        Ok(false) => {}
        Err(e) => eprintln!("vmm: {} {}: {e}", s.kind, s.device),
    }
}
