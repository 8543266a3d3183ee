//! What an event loop needs of any queue of any device model, so that one
//! loop (the VMM's device thread) serves virtio-blk and virtio-net queues
//! alike: [`ServedQueue`], implemented by virtio-blk's [`QueueHandler`]
//! and virtio-net's [`RxQueue`], [`TxQueue`] and [`CtrlQueue`].
//!
//! Each queue has its notify eventfd (the guest's kicks) and may have a
//! second fd to wait on ([`ServedQueue::event_fd`]): virtio-blk's backend
//! completion eventfd, a receive queue's tap while the guest has given
//! buffers or its refill timer while it waits for more. The loop waits on both (level-triggered), calls
//! [`ServedQueue::handle_queue_notify`] or [`ServedQueue::handle_event`],
//! raises the device's interrupt when [`ServedQueue::take_interrupt`] says
//! so, and re-checks [`ServedQueue::event_fd`] after serving a queue: it
//! may come and go (a receive queue without buffers must not be woken by
//! its tap, which stays readable).

use std::os::fd::RawFd;

use vm_memory::GuestAddressSpace;

use super::handler::QueueHandler;
use super::net::ctrl::CtrlQueue;
use super::net::rx::RxQueue;
use super::net::tx::TxQueue;
use crate::Result;

/// One virtqueue as an event loop drives it.
pub trait ServedQueue: Send {
    /// The queue's index in its device.
    fn index(&self) -> u16;
    /// The eventfd the transport writes when the driver notifies.
    fn notify_fd(&self) -> RawFd;
    /// The other fd to wait on now, if any.
    fn event_fd(&self) -> Option<RawFd>;
    /// The notify eventfd is readable.
    fn handle_queue_notify(&mut self) -> Result<()>;
    /// [`ServedQueue::event_fd`] is readable.
    fn handle_event(&mut self) -> Result<()>;
    /// Process what the guest made available (polling found some).
    fn process_queue(&mut self) -> Result<()>;
    /// Whether the guest made chains available that are not taken yet
    /// (one load, for a polling loop).
    fn has_available(&self) -> bool;
    /// Whether the other fd's work is ready without a system call
    /// (backend completions), for a polling loop.
    fn event_ready(&mut self) -> bool;
    /// Whether spinning for [`ServedQueue::event_ready`] is likely to pay.
    fn worth_polling(&self) -> bool;
    /// Leave the guest's notifications off while the loop polls.
    fn set_polling(&mut self, on: bool);
    /// Turn notifications back on before sleeping; whether chains came
    /// meanwhile (then process instead of sleeping).
    fn prepare_to_sleep(&mut self) -> Result<bool>;
    /// Index of the next available-ring entry the queue will read.
    fn next_avail(&self) -> u16;
    /// Index of the next used-ring entry the queue will write (with
    /// [`ServedQueue::next_avail`], where a snapshot finds the ring).
    fn next_used(&self) -> u16;
    /// Requests taken from the ring and not yet returned (backend I/O in
    /// flight); zero for queues that finish each chain as they take it.
    fn in_flight(&self) -> usize {
        0
    }
    /// Wait for at least one request in flight to finish and return it
    /// to the guest (to drain the queue before a pause).
    fn wait_and_complete(&mut self) -> Result<()> {
        Ok(())
    }
    /// Chains or frames refused as malformed since the last call.
    fn take_refused(&mut self) -> u64;
    /// Heads of chains taken from the ring and held for later (a
    /// virtio-net receive queue's stash), oldest first, which a snapshot
    /// saves beside the ring positions; `None` for queues that hold none.
    fn stashed_heads(&self) -> Option<Vec<u16>> {
        None
    }
    /// Queue pairs the driver set through a virtio-net control queue;
    /// `None` for every other queue.
    fn active_pairs(&self) -> Option<u16> {
        None
    }
    /// Whether [`ServedQueue::prepare_to_sleep`] may decide on an
    /// interrupt (one deferred while the loop polled), so that the loop
    /// asks [`ServedQueue::take_interrupt`] after it.
    fn signals_before_sleep(&self) -> bool {
        false
    }
    /// Whether the queue decided to interrupt the guest since the last
    /// call (resetting it); the loop raises the device's interrupt.
    fn take_interrupt(&self) -> Result<bool>;
}

impl<A> ServedQueue for QueueHandler<A>
where
    A: GuestAddressSpace + Send,
    A::T: Send,
{
    fn index(&self) -> u16 {
        QueueHandler::index(self)
    }
    fn notify_fd(&self) -> RawFd {
        QueueHandler::notify_fd(self)
    }
    fn event_fd(&self) -> Option<RawFd> {
        Some(self.completion_fd())
    }
    fn handle_queue_notify(&mut self) -> Result<()> {
        QueueHandler::handle_queue_notify(self)
    }
    fn handle_event(&mut self) -> Result<()> {
        self.handle_completion_event()
    }
    fn process_queue(&mut self) -> Result<()> {
        QueueHandler::process_queue(self)
    }
    fn has_available(&self) -> bool {
        QueueHandler::has_available(self)
    }
    fn event_ready(&mut self) -> bool {
        self.completions_ready()
    }
    fn worth_polling(&self) -> bool {
        QueueHandler::worth_polling(self)
    }
    fn set_polling(&mut self, on: bool) {
        QueueHandler::set_polling(self, on)
    }
    fn prepare_to_sleep(&mut self) -> Result<bool> {
        QueueHandler::prepare_to_sleep(self)
    }
    fn next_avail(&self) -> u16 {
        QueueHandler::next_avail(self)
    }
    fn next_used(&self) -> u16 {
        QueueHandler::next_used(self)
    }
    fn in_flight(&self) -> usize {
        QueueHandler::in_flight(self)
    }
    fn wait_and_complete(&mut self) -> Result<()> {
        QueueHandler::wait_and_complete(self)
    }
    fn take_refused(&mut self) -> u64 {
        QueueHandler::take_refused(self)
    }
    fn take_interrupt(&self) -> Result<bool> {
        QueueHandler::take_interrupt(self)
    }
}

impl<A> ServedQueue for RxQueue<A>
where
    A: GuestAddressSpace + Send,
    A::T: Send,
{
    fn index(&self) -> u16 {
        RxQueue::index(self)
    }
    fn notify_fd(&self) -> RawFd {
        RxQueue::notify_fd(self)
    }
    fn event_fd(&self) -> Option<RawFd> {
        self.wait_fd()
    }
    fn handle_queue_notify(&mut self) -> Result<()> {
        RxQueue::handle_queue_notify(self)
    }
    fn handle_event(&mut self) -> Result<()> {
        self.handle_tap_event()
    }
    fn process_queue(&mut self) -> Result<()> {
        RxQueue::process_queue(self)
    }
    /// Receive buffers are taken when frames come, not when the guest
    /// posts them: nothing to poll.
    fn has_available(&self) -> bool {
        false
    }
    fn event_ready(&mut self) -> bool {
        false
    }
    fn worth_polling(&self) -> bool {
        false
    }
    fn set_polling(&mut self, _on: bool) {}
    /// The queue asks for kicks itself when it runs out of buffers.
    fn prepare_to_sleep(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn next_avail(&self) -> u16 {
        RxQueue::next_avail(self)
    }
    fn next_used(&self) -> u16 {
        RxQueue::next_used(self)
    }
    fn take_refused(&mut self) -> u64 {
        RxQueue::take_refused(self)
    }
    fn stashed_heads(&self) -> Option<Vec<u16>> {
        Some(RxQueue::stashed_heads(self))
    }
    fn take_interrupt(&self) -> Result<bool> {
        RxQueue::take_interrupt(self)
    }
}

impl<A> ServedQueue for TxQueue<A>
where
    A: GuestAddressSpace + Send,
    A::T: Send,
{
    fn index(&self) -> u16 {
        TxQueue::index(self)
    }
    fn notify_fd(&self) -> RawFd {
        TxQueue::notify_fd(self)
    }
    fn event_fd(&self) -> Option<RawFd> {
        None
    }
    fn handle_queue_notify(&mut self) -> Result<()> {
        TxQueue::handle_queue_notify(self)
    }
    fn handle_event(&mut self) -> Result<()> {
        Ok(())
    }
    fn process_queue(&mut self) -> Result<()> {
        TxQueue::process_queue(self)
    }
    fn has_available(&self) -> bool {
        TxQueue::has_available(self)
    }
    fn event_ready(&mut self) -> bool {
        false
    }
    fn worth_polling(&self) -> bool {
        TxQueue::worth_polling(self)
    }
    fn set_polling(&mut self, on: bool) {
        TxQueue::set_polling(self, on)
    }
    fn prepare_to_sleep(&mut self) -> Result<bool> {
        TxQueue::prepare_to_sleep(self)
    }
    fn next_avail(&self) -> u16 {
        TxQueue::next_avail(self)
    }
    fn next_used(&self) -> u16 {
        TxQueue::next_used(self)
    }
    fn take_refused(&mut self) -> u64 {
        TxQueue::take_refused(self)
    }
    fn signals_before_sleep(&self) -> bool {
        true
    }
    fn take_interrupt(&self) -> Result<bool> {
        TxQueue::take_interrupt(self)
    }
}

impl<A> ServedQueue for CtrlQueue<A>
where
    A: GuestAddressSpace + Send,
    A::T: Send,
{
    fn index(&self) -> u16 {
        CtrlQueue::index(self)
    }
    fn notify_fd(&self) -> RawFd {
        CtrlQueue::notify_fd(self)
    }
    fn event_fd(&self) -> Option<RawFd> {
        None
    }
    fn handle_queue_notify(&mut self) -> Result<()> {
        CtrlQueue::handle_queue_notify(self)
    }
    fn handle_event(&mut self) -> Result<()> {
        Ok(())
    }
    fn process_queue(&mut self) -> Result<()> {
        CtrlQueue::process_queue(self)
    }
    fn has_available(&self) -> bool {
        false
    }
    fn event_ready(&mut self) -> bool {
        false
    }
    fn worth_polling(&self) -> bool {
        false
    }
    fn set_polling(&mut self, _on: bool) {}
    fn prepare_to_sleep(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn next_avail(&self) -> u16 {
        CtrlQueue::next_avail(self)
    }
    fn next_used(&self) -> u16 {
        CtrlQueue::next_used(self)
    }
    fn take_refused(&mut self) -> u64 {
        CtrlQueue::take_refused(self)
    }
    fn active_pairs(&self) -> Option<u16> {
        Some(CtrlQueue::active_pairs(self))
    }
    fn take_interrupt(&self) -> Result<bool> {
        CtrlQueue::take_interrupt(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::defs::*;
    use crate::virtio::driver::{Segment, SplitQueueDriver};
    use crate::virtio::testing::{MemDisk, MemDiskOptions};
    use crate::virtio::{DeviceOptions, QueueEvents, VirtioBlock};

    #[test]
    fn a_block_queue_is_served_through_the_trait() {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"),
        );
        let disk = Arc::new(MemDisk::new(1 << 20, MemDiskOptions::default()));
        let mut device = VirtioBlock::new(disk, DeviceOptions::default()).expect("device");
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        device.set_driver_features_page(1, (F_VERSION_1 >> 32) as u32);
        device.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        let mut rings = SplitQueueDriver::new(&*mem, GuestAddress(0), 16).expect("rings");
        rings.configure(device.queue_mut(0).expect("queue"));
        device
            .set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let events = vec![QueueEvents {
            notify: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        }];
        let handlers = device.activate(mem.clone(), events).expect("activate");
        let mut served: Vec<Box<dyn ServedQueue>> = handlers
            .into_iter()
            .map(|h| Box::new(h) as Box<dyn ServedQueue>)
            .collect();
        assert!(served[0].event_fd().is_some(), "the completion eventfd");
        // A flush: header, status byte.
        let header = GuestAddress(0x8000);
        vm_memory::Bytes::write_slice(&*mem, &[REQ_FLUSH as u8, 0, 0, 0], header).expect("header");
        rings
            .add_chain(
                &*mem,
                &[
                    Segment {
                        addr: header,
                        len: 16,
                        device_writes: false,
                    },
                    Segment {
                        addr: GuestAddress(0x9000),
                        len: 1,
                        device_writes: true,
                    },
                ],
            )
            .expect("chain");
        served[0].handle_queue_notify().expect("notify");
        for _ in 0..1000 {
            if rings.pop_used(&*mem).expect("used").is_some() {
                return;
            }
            served[0].handle_event().expect("completions");
        }
        panic!("the flush never completed");
    }
}
