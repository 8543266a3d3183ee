//! The thread that steps the announcements of a restored or migrated
//! VM's NICs (QEMU's announce timers): RARPs into the taps and rounds of
//! VIRTIO_NET_S_ANNOUNCE, each at the time the device asks for. It holds
//! the transports weakly and ends when every announcement is done or the
//! VM is gone.

use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use super::virtio_mmio::VirtioMmio;

/// The longest sleep between looks (a device reset ends an announcement
/// without telling the thread).
const LONGEST_SLEEP: Duration = Duration::from_millis(100);

/// Steps each of `due` (a transport and when it asked to be called)
/// on a thread of its own until none has anything left.
pub fn spawn(due: Vec<(Weak<Mutex<VirtioMmio>>, Instant)>) {
    if due.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("net-announce".into())
        .spawn(move || run(due));
    if let Err(e) = spawned {
        eprintln!("vmm: cannot start the thread that announces the NICs: {e}");
    }
}

fn run(mut due: Vec<(Weak<Mutex<VirtioMmio>>, Instant)>) {
    while let Some(next) = due.iter().map(|(_, at)| *at).min() {
        let now = Instant::now();
        std::thread::sleep(next.saturating_duration_since(now).min(LONGEST_SLEEP));
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
    }
}
