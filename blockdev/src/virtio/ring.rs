//! The device side of one split virtqueue (virtio 1.2, 2.7), on guest
//! memory seen through [`RingMemory`] (the device's region view):
//! popping available heads, walking their descriptor chains
//! (direct or through one indirect table), returning used elements, and
//! event-idx notification suppression.
//!
//! The queue's setup (size, ring addresses, event idx) comes from
//! virtio-queue's [`Queue`], as the transport wrote it; this module takes
//! over the ring positions at activation. It behaves as virtio-queue's
//! `Queue` and `DescriptorChain` do (same checks, same ends of a chain, the
//! same errors), but resolves the three ring areas once, so that each ring
//! access is a bounds check and one atomic or volatile operation instead of
//! a walk through vm-memory's generic accessors.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Error as QueueError, Queue, QueueT};

use super::memory::{Area, RingMemory, DESCRIPTOR_BYTES};

/// Used ring flag: the device does not want notifications.
const USED_F_NO_NOTIFY: u16 = 1;
/// Bytes before the first entry of either ring (flags and idx).
const RING_HEADER: u64 = 4;
/// Bytes of an available-ring entry.
const AVAIL_ENTRY: u64 = 2;
/// Bytes of a used-ring element.
const USED_ELEM: u64 = 8;
/// Where [`SplitRing::park_avail_event`] puts `avail_event`: the largest
/// value a driver comparing without wrap-around can still fall short of
/// (it notifies only at index 0xffff), and for a driver that tests the
/// crossing, crossed once per 65536 buffers.
const PARKED_AVAIL_EVENT: u16 = 0xfffe;
/// Longest indirect table virtio-queue accepts (its entry count is a u16).
const MAX_INDIRECT_ENTRIES: u32 = u16::MAX as u32;

/// Why a queue's rings cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingSetupError {
    /// A ring is not wholly inside one guest memory region.
    OutsideMemory,
    /// A ring breaks the alignment virtio requires.
    Misaligned,
}

/// The device side of one split virtqueue.
#[derive(Debug)]
pub(crate) struct SplitRing {
    size: u16,
    desc_table: Area,
    avail: Area,
    used: Area,
    event_idx: bool,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Used elements added since the last `needs_notification`.
    num_added: Wrapping<u16>,
}

impl SplitRing {
    /// Take over `queue` (as the driver set it up) on `view`.
    pub(crate) fn new<V: RingMemory>(queue: &Queue, view: &V) -> Result<Self, RingSetupError> {
        let size = queue.size();
        let entries = u64::from(size);
        let (desc, avail, used) = (queue.desc_table(), queue.avail_ring(), queue.used_ring());
        if size == 0 || desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return Err(RingSetupError::Misaligned);
        }
        // Descriptor table; available ring with used_event; used ring with
        // avail_event.
        let area = |addr, len| view.area(addr, len).ok_or(RingSetupError::OutsideMemory);
        Ok(SplitRing {
            size,
            desc_table: area(desc, DESCRIPTOR_BYTES * entries)?,
            avail: area(avail, RING_HEADER + AVAIL_ENTRY * entries + 2)?,
            used: area(used, RING_HEADER + USED_ELEM * entries + 2)?,
            event_idx: queue.event_idx_enabled(),
            next_avail: Wrapping(queue.next_avail()),
            next_used: Wrapping(queue.next_used()),
            num_added: Wrapping(0),
        })
    }

    /// Entries in the queue.
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Index of the next available-ring entry to read.
    pub(crate) fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Index of the next used-ring entry to write.
    pub(crate) fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    pub(crate) fn event_idx_enabled(&self) -> bool {
        self.event_idx
    }

    /// The driver's available index.
    fn avail_idx<V: RingMemory>(&self, view: &V, order: Ordering) -> Result<u16, QueueError> {
        view.load_u16(&self.avail, 2, order)
            .ok_or(QueueError::AddressOverflow)
    }

    /// Whether the driver made chains available that were not popped yet
    /// (one atomic load; for a device that polls before it sleeps).
    pub(crate) fn has_available<V: RingMemory>(&self, view: &V) -> bool {
        self.avail_idx(view, Ordering::Acquire)
            .is_ok_and(|idx| idx != self.next_avail.0)
    }

    /// The head of the next available chain, if the driver made one
    /// available. An available index more than a queue's worth ahead of
    /// ours is an error (a broken or hostile driver), as in virtio-queue.
    pub(crate) fn pop_head<V: RingMemory>(&mut self, view: &V) -> Result<Option<u16>, QueueError> {
        let avail_idx = Wrapping(self.avail_idx(view, Ordering::Acquire)?);
        if (avail_idx - self.next_avail).0 > self.size {
            return Err(QueueError::InvalidAvailRingIndex);
        }
        if avail_idx == self.next_avail {
            return Ok(None);
        }
        let slot = u64::from(self.next_avail.0 % self.size);
        let head = view
            .load_u16(
                &self.avail,
                RING_HEADER + AVAIL_ENTRY * slot,
                Ordering::Acquire,
            )
            .ok_or(QueueError::AddressOverflow)?;
        self.next_avail += Wrapping(1);
        Ok(Some(head))
    }

    /// The descriptors of the chain starting at `head`.
    pub(crate) fn chain<'a, V: RingMemory>(&'a self, view: &'a V, head: u16) -> Chain<'a, V> {
        Chain {
            view,
            ring: self,
            indirect: None,
            table_len: self.size,
            next_index: head,
            ttl: self.size,
            yielded_bytes: 0,
        }
    }

    /// Return chain `head` with `len` bytes written into it.
    pub(crate) fn add_used<V: RingMemory>(
        &mut self,
        view: &V,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if head >= self.size {
            return Err(QueueError::InvalidDescriptorIndex);
        }
        let slot = u64::from(self.next_used.0 % self.size);
        if !view.write_used_elem(
            &self.used,
            RING_HEADER + USED_ELEM * slot,
            u32::from(head),
            len,
        ) {
            return Err(QueueError::AddressOverflow);
        }
        self.next_used += Wrapping(1);
        self.num_added += Wrapping(1);
        if view.store_u16(&self.used, 2, self.next_used.0, Ordering::Release) {
            Ok(())
        } else {
            Err(QueueError::AddressOverflow)
        }
    }

    /// Ask the driver not to notify (without event idx: the used ring's
    /// NO_NOTIFY flag; with it, nothing: the driver notifies once until we
    /// move avail_event on).
    pub(crate) fn disable_notification<V: RingMemory>(
        &mut self,
        view: &V,
    ) -> Result<(), QueueError> {
        if self.event_idx {
            return Ok(());
        }
        self.store_used_u16(view, 0, USED_F_NO_NOTIFY)
    }

    /// Under event idx, ask the driver not to notify by writing
    /// `avail_event` where the driver's index will not reach for a long
    /// time ([`PARKED_AVAIL_EVENT`]). Leaving it behind is enough for a
    /// driver that notifies only when its index crosses `avail_event`
    /// (virtio 1.2, 2.7.10), but one that notifies whenever its index is
    /// past it (virtio-drivers' `should_notify`) would notify on every
    /// buffer. Without event idx, as [`SplitRing::disable_notification`].
    /// A parked event is at worst one needless notification per 65536
    /// buffers; [`SplitRing::enable_notification`] undoes it.
    pub(crate) fn park_avail_event<V: RingMemory>(&mut self, view: &V) -> Result<(), QueueError> {
        if !self.event_idx {
            return self.disable_notification(view);
        }
        let avail_event = RING_HEADER + USED_ELEM * u64::from(self.size);
        self.store_used_u16(view, avail_event, PARKED_AVAIL_EVENT)
    }

    /// Ask the driver to notify again, and say whether chains became
    /// available meanwhile (so that none waits for a notification that
    /// was suppressed).
    pub(crate) fn enable_notification<V: RingMemory>(
        &mut self,
        view: &V,
    ) -> Result<bool, QueueError> {
        if self.event_idx {
            let avail_event = RING_HEADER + USED_ELEM * u64::from(self.size);
            self.store_used_u16(view, avail_event, self.next_avail.0)?;
        } else {
            self.store_used_u16(view, 0, 0)?;
        }
        // The next read must not move before the store above.
        fence(Ordering::SeqCst);
        Ok(self.avail_idx(view, Ordering::Relaxed)? != self.next_avail.0)
    }

    /// Under event idx, ask the driver to notify only once it has made
    /// `batch` more chains available (`avail_event` at
    /// `next_avail + batch - 1`: a driver testing the crossing and one
    /// testing `avail_idx > avail_event` both notify at the `batch`-th),
    /// and say how many are available now, after the store (so that a
    /// crossing made before it is not waited for). Without event idx
    /// (no way to ask for a count) or for `batch` of 1, as
    /// [`SplitRing::enable_notification`].
    pub(crate) fn enable_notification_after<V: RingMemory>(
        &mut self,
        view: &V,
        batch: u16,
    ) -> Result<u16, QueueError> {
        if !self.event_idx || batch <= 1 {
            self.enable_notification(view)?;
        } else {
            let avail_event = RING_HEADER + USED_ELEM * u64::from(self.size);
            let event = self.next_avail + Wrapping(batch - 1);
            self.store_used_u16(view, avail_event, event.0)?;
            // The read below must not move before the store above.
            fence(Ordering::SeqCst);
        }
        let avail = Wrapping(self.avail_idx(view, Ordering::Relaxed)?);
        Ok((avail - self.next_avail).0)
    }

    /// Whether the driver wants an interrupt for the elements added since
    /// the last call (event idx: whether used_event lies among them).
    pub(crate) fn needs_notification<V: RingMemory>(
        &mut self,
        view: &V,
    ) -> Result<bool, QueueError> {
        // The used ring writes above must be visible before the read below.
        fence(Ordering::SeqCst);
        if !self.event_idx {
            return Ok(true);
        }
        let used_event_at = RING_HEADER + AVAIL_ENTRY * u64::from(self.size);
        let used_event = Wrapping(
            view.load_u16(&self.avail, used_event_at, Ordering::Relaxed)
                .ok_or(QueueError::AddressOverflow)?,
        );
        let new = self.next_used;
        let old = new - self.num_added;
        self.num_added = Wrapping(0);
        Ok(new - used_event - Wrapping(1) < new - old)
    }

    /// The available ring's flags (VRING_AVAIL_F_NO_INTERRUPT), read after
    /// `needs_notification`'s fence.
    pub(crate) fn avail_flags<V: RingMemory>(&self, view: &V) -> Result<u16, QueueError> {
        view.load_u16(&self.avail, 0, Ordering::Acquire)
            .ok_or(QueueError::AddressOverflow)
    }

    fn store_used_u16<V: RingMemory>(
        &self,
        view: &V,
        offset: u64,
        value: u16,
    ) -> Result<(), QueueError> {
        if view.store_u16(&self.used, offset, value, Ordering::Relaxed) {
            Ok(())
        } else {
            Err(QueueError::AddressOverflow)
        }
    }
}

/// The descriptors of one chain, in order. The walk ends early, as
/// virtio-queue's does, on an index past the table, an unreadable
/// descriptor, an indirect table inside an indirect table or of a length
/// that is not whole descriptors, more descriptors than the table holds (a
/// loop), or lengths adding past 4 GiB. The last descriptor yielded then
/// still has NEXT set, which is how the caller tells a cut chain.
pub(crate) struct Chain<'a, V> {
    view: &'a V,
    ring: &'a SplitRing,
    /// Guest address of the indirect table being walked, if any.
    indirect: Option<u64>,
    table_len: u16,
    next_index: u16,
    ttl: u16,
    yielded_bytes: u32,
}

impl<V: RingMemory> Iterator for Chain<'_, V> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next_index >= self.table_len {
                return None;
            }
            let desc = match self.indirect {
                None => self
                    .view
                    .table_descriptor(&self.ring.desc_table, self.next_index)?,
                Some(table) => {
                    let at = table.checked_add(u64::from(self.next_index) * DESCRIPTOR_BYTES)?;
                    self.view.read_descriptor(at)?
                }
            };
            if desc.refers_to_indirect_table() {
                if self.indirect.is_some() || u64::from(desc.len()) % DESCRIPTOR_BYTES != 0 {
                    return None;
                }
                let entries = desc.len() / DESCRIPTOR_BYTES as u32;
                if entries > MAX_INDIRECT_ENTRIES {
                    return None;
                }
                self.indirect = Some(desc.addr().0);
                self.table_len = entries as u16;
                self.next_index = 0;
                self.ttl = self.table_len;
                continue;
            }
            self.yielded_bytes = self.yielded_bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next_index = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Held against virtio-queue's `Queue` and `DescriptorChain` on the same
    //! memory: random descriptor tables (direct and indirect, loops, bad
    //! indices, tables across region ends and in the hole), random
    //! available rings and indices, used elements and event-idx values.
    use super::super::memory::GuestView;
    use super::*;
    use proptest::prelude::*;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const QUEUE_SIZE: u16 = 16;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    /// Region one ends here; region two starts after a hole.
    const REGION_ONE_END: u64 = 0x8000;
    const REGION_TWO: u64 = 0x1_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), REGION_ONE_END as usize),
            (GuestAddress(REGION_TWO), 0x1000),
        ])
        .expect("memory")
    }

    fn queue(event_idx: bool) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        queue
    }

    /// Where indirect tables are written.
    fn indirect_at() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0x4000u64),
            Just(REGION_ONE_END - 40),
            Just(REGION_TWO + 0xfe0)
        ]
    }

    fn table_addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => indirect_at(),
            1 => Just(REGION_ONE_END - 24),
            1 => Just(REGION_ONE_END + 8),
            1 => Just(REGION_TWO + 0xff8),
            1 => Just(u64::MAX - 8),
            1 => any::<u64>(),
        ]
    }

    fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        (
            prop_oneof![table_addr(), 0u64..0x8000],
            prop_oneof![
                Just(48u32),
                Just(16),
                Just(0),
                Just(17),
                Just(0x10_0000),
                any::<u32>()
            ],
            0u16..8,
            prop_oneof![0u16..QUEUE_SIZE + 2, any::<u16>()],
        )
    }

    fn write_descriptor(
        mem: &GuestMemoryMmap,
        at: u64,
        (addr, len, flags, next): (u64, u32, u16, u16),
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        // Tables at the end of memory are partly written, or not at all.
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    fn fields(desc: Descriptor) -> (u64, u32, u16, u16) {
        (desc.addr().0, desc.len(), desc.flags(), desc.next())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn chains_and_rings_match_virtio_queue(
            table in proptest::collection::vec(descriptor(), QUEUE_SIZE as usize),
            indirect in proptest::collection::vec(descriptor(), 8),
            indirect_at in indirect_at(),
            heads in proptest::collection::vec(prop_oneof![0u16..QUEUE_SIZE, any::<u16>()], QUEUE_SIZE as usize),
            avail_idx in prop_oneof![0u16..=QUEUE_SIZE, any::<u16>()],
            used_event in prop_oneof![0u16..24, any::<u16>()],
            event_idx in any::<bool>(),
            used in proptest::collection::vec((prop_oneof![3 => 0u16..QUEUE_SIZE, 1 => any::<u16>()], any::<u32>()), 0..20),
        ) {
            let theirs_mem = memory();
            for (i, desc) in table.iter().enumerate() {
                write_descriptor(&theirs_mem, DESC + 16 * i as u64, *desc);
            }
            for (i, desc) in indirect.iter().enumerate() {
                write_descriptor(&theirs_mem, indirect_at + 16 * i as u64, *desc);
            }
            for (i, head) in heads.iter().enumerate() {
                theirs_mem.write_obj(*head, GuestAddress(AVAIL + 4 + 2 * i as u64)).expect("ring");
            }
            theirs_mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).expect("idx");
            theirs_mem
                .write_obj(used_event, GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE)))
                .expect("used_event");
            let ours_mem = memory();
            let mut image = vec![0u8; REGION_ONE_END as usize];
            theirs_mem.read_slice(&mut image, GuestAddress(0)).expect("copy");
            ours_mem.write_slice(&image, GuestAddress(0)).expect("copy");
            let mut two = vec![0u8; 0x1000];
            theirs_mem.read_slice(&mut two, GuestAddress(REGION_TWO)).expect("copy");
            ours_mem.write_slice(&two, GuestAddress(REGION_TWO)).expect("copy");

            let mut theirs = queue(event_idx);
            let view = GuestView::new(&ours_mem).expect("plain memory");
            let mut ours = SplitRing::new(&queue(event_idx), &view).expect("rings");

            // Pop everything the driver made available, walking each chain.
            loop {
                let their_chain = match theirs.iter(&theirs_mem) {
                    Ok(mut iter) => Ok(iter.next()),
                    Err(e) => Err(e),
                };
                let our_head = ours.pop_head(&view);
                match (their_chain, our_head) {
                    (Ok(None), Ok(None)) => break,
                    (Ok(Some(chain)), Ok(Some(head))) => {
                        prop_assert_eq!(chain.head_index(), head);
                        let their_descs: Vec<_> = chain.map(fields).collect();
                        let our_descs: Vec<_> = ours.chain(&view, head).map(fields).collect();
                        prop_assert_eq!(their_descs, our_descs);
                    }
                    (Err(a), Err(b)) => {
                        prop_assert_eq!(a.to_string(), b.to_string());
                        break;
                    }
                    (a, b) => prop_assert!(false, "virtio-queue {:?}, ours {:?}", a.map(|c| c.map(|c| c.head_index())), b),
                }
            }
            prop_assert_eq!(theirs.next_avail(), ours.next_avail());

            // Notifications on and off, used elements, interrupt decisions.
            theirs.disable_notification(&theirs_mem).expect("disable");
            ours.disable_notification(&view).expect("disable");
            for (n, (head, len)) in used.iter().enumerate() {
                let a = theirs.add_used(&theirs_mem, *head, *len);
                let b = ours.add_used(&view, *head, *len);
                prop_assert_eq!(a.is_ok(), b.is_ok());
                if n % 3 != 1 {
                    prop_assert_eq!(
                        theirs.needs_notification(&theirs_mem).expect("theirs"),
                        ours.needs_notification(&view).expect("ours")
                    );
                }
            }
            prop_assert_eq!(
                theirs.enable_notification(&theirs_mem).expect("theirs"),
                ours.enable_notification(&view).expect("ours")
            );
            prop_assert_eq!(
                theirs.needs_notification(&theirs_mem).expect("theirs"),
                ours.needs_notification(&view).expect("ours")
            );
            prop_assert_eq!(theirs.next_used(), ours.next_used());
            let mut a = vec![0u8; 0x200];
            let mut b = vec![0u8; 0x200];
            theirs_mem.read_slice(&mut a, GuestAddress(USED)).expect("used ring");
            ours_mem.read_slice(&mut b, GuestAddress(USED)).expect("used ring");
            prop_assert_eq!(a, b, "used rings differ");
        }
    }

    #[test]
    fn rings_outside_one_region_or_misaligned_are_refused() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        let mut q = queue(false);
        q.set_used_ring_address(Some((REGION_ONE_END - 8) as u32), Some(0));
        assert_eq!(
            SplitRing::new(&q, &view).err(),
            Some(RingSetupError::OutsideMemory)
        );
        let mut q = queue(false);
        q.set_desc_table_address(Some(0x9000), Some(0));
        assert_eq!(
            SplitRing::new(&q, &view).err(),
            Some(RingSetupError::OutsideMemory)
        );
        let mut q = queue(false);
        // virtio-queue keeps the old address on a misaligned write, so set
        // it through its state.
        let mut state = q.state();
        state.avail_ring = AVAIL + 1;
        q = Queue::try_from(state).unwrap_or(q);
        if q.avail_ring() % 2 == 1 {
            assert_eq!(
                SplitRing::new(&q, &view).err(),
                Some(RingSetupError::Misaligned)
            );
        }
    }

    #[test]
    fn a_batch_notification_puts_avail_event_at_its_last_chain() {
        let mem = memory();
        let view = GuestView::new(&mem).expect("plain memory");
        let avail_event = GuestAddress(USED + 4 + 8 * u64::from(QUEUE_SIZE));
        let avail_idx = GuestAddress(AVAIL + 2);
        let mut ring = SplitRing::new(&queue(true), &view).expect("ring");
        // Near the wrap: the event wraps as the driver's index will.
        ring.next_avail = Wrapping(0xfffe);
        mem.write_obj(0xfffeu16, avail_idx).expect("avail idx");
        assert_eq!(ring.enable_notification_after(&view, 4).expect("enable"), 0);
        assert_eq!(mem.read_obj::<u16>(avail_event).expect("event"), 1);
        // Two made available before the store: counted, not a batch.
        mem.write_obj(0u16, avail_idx).expect("avail idx");
        assert_eq!(ring.enable_notification_after(&view, 4).expect("enable"), 2);
        // A batch of one is a kick at the next chain.
        assert_eq!(ring.enable_notification_after(&view, 1).expect("enable"), 2);
        assert_eq!(mem.read_obj::<u16>(avail_event).expect("event"), 0xfffe);
        // Without event idx there is no count to ask for: the NO_NOTIFY
        // flag is cleared, as for a kick at the next chain.
        let mut ring = SplitRing::new(&queue(false), &view).expect("ring");
        mem.write_obj(USED_F_NO_NOTIFY, GuestAddress(USED))
            .expect("flags");
        assert_eq!(ring.enable_notification_after(&view, 4).expect("enable"), 0);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).expect("flags"), 0);
    }
}
