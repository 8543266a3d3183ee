//! The thread that steps the announcements of a restored or migrated
//! VM's NICs (QEMU's announce timers): RARPs into the taps and rounds of
//! VIRTIO_NET_S_ANNOUNCE, each at the time the device asks for. It holds
//! the transports weakly and ends when every announcement is done or the
//! VM is gone. While the VM is paused ([`RunGate`] closed) it steps
//! nothing, and at resume every announcement is postponed by the pause
//! (QEMU's timers run on the virtual clock, which stops with the VM).

use std::sync::{Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::virtio_mmio::VirtioMmio;

/// The longest sleep between looks (a device reset ends an announcement
/// without telling the thread).
const LONGEST_SLEEP: Duration = Duration::from_millis(100);

/// Whether the VM runs, for the announce thread: closed while the VM is
/// paused, since when.
#[derive(Debug, Default)]
pub struct RunGate {
    paused_since: Mutex<Option<Instant>>,
    opened: Condvar,
}

impl RunGate {
    fn state(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM is pausing: nothing is stepped until [`RunGate::open`]
    /// (a gate closed already keeps its first instant).
    pub fn close(&self) {
        self.state().get_or_insert_with(Instant::now);
    }

    /// How long the gate has been closed (`None` when open): what the
    /// announcements are postponed by before [`RunGate::open`].
    pub fn closed_for(&self) -> Option<Duration> {
        self.state().map(|since| since.elapsed())
    }

    /// The VM runs again: the thread steps on.
    pub fn open(&self) {
        *self.state() = None;
        self.opened.notify_all();
    }

    /// Waits up to `timeout` for the gate to be open; whether it is.
    fn wait_open(&self, timeout: Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .opened
            .wait_timeout_while(state, timeout, |paused| paused.is_some())
            .unwrap_or_else(|e| e.into_inner());
        state.is_none()
    }
}

/// Steps each of `due` (a transport and when it asked to be called)
/// on a thread of its own until none has anything left, while `gate`
/// is open.
pub fn spawn(due: Vec<(Weak<Mutex<VirtioMmio>>, Instant)>, gate: std::sync::Arc<RunGate>) {
    if due.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("net-announce".into())
        .spawn(move || run(due, &gate));
    if let Err(e) = spawned {
        eprintln!("vmm: cannot start the thread that announces the NICs: {e}");
    }
}

fn run(mut due: Vec<(Weak<Mutex<VirtioMmio>>, Instant)>, gate: &RunGate) {
    while let Some(next) = due.iter().map(|(_, at)| *at).min() {
        let now = Instant::now();
        std::thread::sleep(next.saturating_duration_since(now).min(LONGEST_SLEEP));
        // Held while stepping: once the VM's pause has closed the gate,
        // nothing more is stepped.
        let open = gate.state();
        if open.is_some() {
            drop(open);
            // Paused: the times asked for move with the pause (the
            // devices' own are postponed at resume); a VM dropped while
            // paused ends the thread.
            while !gate.wait_open(LONGEST_SLEEP) {
                due.retain(|(transport, _)| transport.strong_count() > 0);
                if due.is_empty() {
                    return;
                }
            }
            let now = Instant::now();
            for (_, at) in &mut due {
                *at = (*at).max(now);
            }
            continue;
        }
        let now = Instant::now();
        due.retain_mut(|(transport, at)| {
            if *at > now {
                return true;
            }
            let Some(transport) = transport.upgrade() else {
                return false;
            };
            let mut transport = transport.lock().unwrap_or_else(|e| e.into_inner());
            match transport.announce_tick(now) {
                Some(wake) => {
                    *at = wake;
                    true
                }
                None => false,
            }
        });
        drop(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_holds_until_opened_and_says_for_how_long() {
        let gate = std::sync::Arc::new(RunGate::default());
        assert_eq!(gate.closed_for(), None);
        assert!(gate.wait_open(Duration::ZERO));
        gate.close();
        std::thread::sleep(Duration::from_millis(20));
        gate.close();
        assert!(gate.closed_for().expect("closed") >= Duration::from_millis(20));
        assert!(!gate.wait_open(Duration::from_millis(10)));
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                gate.open();
            })
        };
        assert!(gate.wait_open(Duration::from_secs(10)));
        opener.join().expect("opener");
        assert_eq!(gate.closed_for(), None);
    }
}
