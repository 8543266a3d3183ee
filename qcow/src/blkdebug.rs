//! QEMU's blkdebug error injection as layers of our own: rules read from
//! a blkdebug config file (`[inject-error]` and `[set-state]` sections)
//! or from options, a state machine that starts in state 1, and two
//! wrappers that fail requests as the active rules say: [`BlkdebugStorage`]
//! under a format (QEMU's `blkdebug:CONFIG:FILE`) and [`BlkdebugImage`]
//! over one (`{"driver": "blkdebug", "image": {...}}`), whose block-status
//! requests can fail too.
//!
//! As in QEMU's block/blkdebug.c, an inject-error rule acts only once its
//! event has fired in a matching state; that makes it active, and the
//! active rules of the last event that had any are checked on every
//! request: the first whose I/O type matches, and whose sector (if it
//! names one) lies in the request, fails it with its errno (and is
//! dropped if `once`). The open fires the event `none`; our format code
//! fires no other event yet, so rules on other events never act.

use std::sync::{Arc, Mutex};

use crate::device::{BlockRead, Extent, SECTOR_SIZE};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Most rules one blkdebug layer accepts.
pub const MAX_RULES: usize = 4096;
/// Longest config file read.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// `EIO`, the default errno.
const EIO: i32 = 5;

/// The events QEMU's block drivers announce (qapi's `BlkdebugEvent`).
pub const EVENTS: &[&str] = &[
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
];

/// The kinds of request a rule can fail (qapi's `BlkdebugIOType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A write of zeros.
    WriteZeroes,
    /// A discard.
    Discard,
    /// A flush.
    Flush,
    /// A block-status query.
    BlockStatus,
}

impl IoType {
    fn parse(name: &str) -> Result<IoType> {
        Ok(match name {
            "read" => IoType::Read,
            "write" => IoType::Write,
            "write-zeroes" => IoType::WriteZeroes,
            "discard" => IoType::Discard,
            "flush" => IoType::Flush,
            "block-status" => IoType::BlockStatus,
            other => return Err(invalid_value(other)),
        })
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The I/O types a rule without `iotype` fails (QEMU's default).
const DEFAULT_IOTYPES: u8 = 0b1_1111;

fn invalid_value(value: &str) -> Error {
    Error::Unsupported(format!("invalid parameter value: {value}"))
}

/// An `[inject-error]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// The event that activates it (an index into [`EVENTS`]).
    pub event: usize,
    /// The state it applies in (0: any).
    pub state: u64,
    /// Bit mask of [`IoType`]s it fails.
    pub iotypes: u8,
    /// The errno it fails with (0 fails nothing).
    pub errno: i32,
    /// The byte offset of the sector a request must cover, if any.
    pub offset: Option<u64>,
    /// Dropped after failing one request.
    pub once: bool,
}

/// A `[set-state]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetState {
    /// The event that fires it.
    pub event: usize,
    /// The state it applies in (0: any).
    pub state: u64,
    /// The state it moves to.
    pub new_state: u64,
}

/// The rules of one blkdebug layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `[inject-error]` rules, in the order given.
    pub inject: Vec<InjectError>,
    /// `[set-state]` rules, in the order given.
    pub set_state: Vec<SetState>,
}

/// One rule's options as `key = value` pairs.
pub type RuleOptions = Vec<(String, String)>;

fn number(key: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| {
        Error::Unsupported(format!(
            "Parameter '{key}' expects a non-negative number below 2^64"
        ))
    })
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Error::Unsupported(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn event(options: &RuleOptions) -> Result<usize> {
    let name = options
        .iter()
        .find(|(k, _)| k == "event")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| Error::Unsupported("Missing event name for rule".into()))?;
    EVENTS
        .iter()
        .position(|e| *e == name)
        .ok_or_else(|| invalid_value(name))
}

impl Rules {
    /// Adds an `[inject-error]` rule from its options.
    pub fn add_inject_error(&mut self, options: &RuleOptions) -> Result<()> {
        self.check_room()?;
        let mut rule = InjectError {
            event: event(options)?,
            state: 0,
            iotypes: DEFAULT_IOTYPES,
            errno: EIO,
            offset: None,
            once: false,
        };
        for (key, value) in options {
            match key.as_str() {
                "event" | "immediately" => {}
                "state" => rule.state = number(key, value)?,
                "iotype" => rule.iotypes = IoType::parse(value)?.bit(),
                "errno" => {
                    rule.errno =
                        i32::try_from(number(key, value)?).map_err(|_| invalid_value(value))?
                }
                "sector" => {
                    rule.offset = Some(
                        number(key, value)?
                            .checked_mul(SECTOR_SIZE)
                            .ok_or_else(|| invalid_value(value))?,
                    )
                }
                "once" => rule.once = boolean(key, value)?,
                other => return Err(Error::Unsupported(format!("Invalid parameter '{other}'"))),
            }
        }
        self.inject.push(rule);
        Ok(())
    }

    /// Adds a `[set-state]` rule from its options.
    pub fn add_set_state(&mut self, options: &RuleOptions) -> Result<()> {
        self.check_room()?;
        let mut rule = SetState {
            event: event(options)?,
            state: 0,
            new_state: 0,
        };
        for (key, value) in options {
            match key.as_str() {
                "event" => {}
                "state" => rule.state = number(key, value)?,
                "new_state" => rule.new_state = number(key, value)?,
                other => return Err(Error::Unsupported(format!("Invalid parameter '{other}'"))),
            }
        }
        self.set_state.push(rule);
        Ok(())
    }

    fn check_room(&self) -> Result<()> {
        if self.inject.len() + self.set_state.len() >= MAX_RULES {
            return Err(Error::Unsupported(format!(
                "blkdebug: more than {MAX_RULES} rules"
            )));
        }
        Ok(())
    }

    /// Reads a blkdebug config file's text (QEMU's config syntax:
    /// `[section]` lines, `key = "value"` lines, `#` comments).
    pub fn parse_config(&mut self, text: &str) -> Result<()> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(Error::Unsupported(format!(
                "blkdebug config file is larger than {MAX_CONFIG_LEN} bytes"
            )));
        }
        let mut section: Option<(String, RuleOptions)> = None;
        let finish = |rules: &mut Rules, section: Option<(String, RuleOptions)>| match section {
            Some((name, options)) if name == "inject-error" => rules.add_inject_error(&options),
            Some((_, options)) => rules.add_set_state(&options),
            None => Ok(()),
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || Error::Unsupported(format!("line {}: parse error", number + 1));
            if let Some(head) = line.strip_prefix('[') {
                let name = head.strip_suffix(']').ok_or_else(bad)?;
                let name = name.split_whitespace().next().unwrap_or_default();
                if name != "inject-error" && name != "set-state" {
                    return Err(Error::Unsupported(format!(
                        "line {}: no group definition for '{name}'",
                        number + 1
                    )));
                }
                finish(self, section.take())?;
                section = Some((name.to_string(), Vec::new()));
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let (_, options) = section.as_mut().ok_or_else(bad)?;
            options.push((key.trim().to_string(), value.to_string()));
        }
        finish(self, section)
    }
}

/// The live state of one blkdebug layer: its state number and the rules
/// in force. Shared by the wrappers of one layer.
#[derive(Debug)]
pub struct Blkdebug {
    inner: Mutex<Live>,
}

#[derive(Debug)]
struct Live {
    state: u64,
    rules: Rules,
    /// Indexes into `rules.inject`, checked in order.
    active: Vec<usize>,
}

impl Blkdebug {
    /// A layer with `rules`, opened: state 1, and the event `none` fired.
    pub fn open(rules: Rules) -> Arc<Blkdebug> {
        let layer = Blkdebug {
            inner: Mutex::new(Live {
                state: 1,
                rules,
                active: Vec::new(),
            }),
        };
        let none = EVENTS.len() - 1;
        layer.fire(none);
        Arc::new(layer)
    }

    /// Fires the event with index `event` into [`EVENTS`]: rules of the
    /// current state activate (replacing the active set if any inject
    /// rule does) and set-state rules move the state.
    pub fn fire(&self, event: usize) {
        let mut live = self.inner.lock().expect("blkdebug lock poisoned");
        let state = live.state;
        let applies = |rule_state: u64| rule_state == 0 || rule_state == state;
        let activated: Vec<usize> = (0..live.rules.inject.len())
            .filter(|&i| {
                let r = &live.rules.inject[i];
                r.event == event && applies(r.state)
            })
            .collect();
        if !activated.is_empty() {
            live.active = activated;
        }
        // QEMU walks the rules newest first and the last one applied wins:
        // the oldest matching set-state rule decides.
        if let Some(rule) = live
            .rules
            .set_state
            .iter()
            .find(|r| r.event == event && applies(r.state))
        {
            live.state = rule.new_state;
        }
    }

    /// The current state.
    pub fn state(&self) -> u64 {
        self.inner.lock().expect("blkdebug lock poisoned").state
    }

    /// Fails a request of `kind` on `[offset, offset + len)` if an active
    /// rule says so.
    pub fn check(&self, kind: IoType, offset: u64, len: u64) -> Result<()> {
        let mut live = self.inner.lock().expect("blkdebug lock poisoned");
        let hit = live.active.iter().position(|&i| {
            let r = &live.rules.inject[i];
            let covers = match r.offset {
                None => true,
                Some(o) => len > 0 && o >= offset && o - offset < len,
            };
            covers && r.iotypes & kind.bit() != 0
        });
        let Some(at) = hit else { return Ok(()) };
        let rule = live.rules.inject[live.active[at]].clone();
        if rule.errno == 0 {
            return Ok(());
        }
        if rule.once {
            live.active.remove(at);
        }
        Err(Error::io(
            format!("blkdebug: injected error at offset {offset}"),
            std::io::Error::from_raw_os_error(rule.errno),
        ))
    }
}

/// Storage whose requests a blkdebug layer may fail (under a format).
pub struct BlkdebugStorage {
    inner: Arc<dyn Storage>,
    layer: Arc<Blkdebug>,
}

impl BlkdebugStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>, layer: Arc<Blkdebug>) -> BlkdebugStorage {
        BlkdebugStorage { inner, layer }
    }
}

impl Storage for BlkdebugStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.layer.check(IoType::Read, offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.layer.check(IoType::Write, offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.layer.check(IoType::Flush, 0, 0)?;
        self.inner.flush()
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        self.inner.set_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.layer.check(IoType::Discard, offset, len)?;
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.allocate(offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
    fn data_extent(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        self.layer.check(IoType::BlockStatus, offset, len)?;
        self.inner.data_extent(offset, len)
    }
}

/// An image whose reads and block-status queries a blkdebug layer may
/// fail (over a format).
pub struct BlkdebugImage<I> {
    inner: I,
    layer: Arc<Blkdebug>,
}

impl<I: BlockRead> BlkdebugImage<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, layer: Arc<Blkdebug>) -> BlkdebugImage<I> {
        BlkdebugImage { inner, layer }
    }

    /// The image beneath.
    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// The layer's rules and state.
    pub fn layer(&self) -> &Arc<Blkdebug> {
        &self.layer
    }
}

impl<I: BlockRead> BlockRead for BlkdebugImage<I> {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.layer.check(IoType::Read, offset, buf.len() as u64)?;
        self.inner.read_at(buf, offset)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.layer.check(IoType::BlockStatus, offset, len)?;
        self.inner.extents(offset, len)
    }
    fn backing(&self) -> Option<&dyn BlockRead> {
        self.inner.backing()
    }
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
}

/// An image opened over a blkdebug layer is an image like any other: its
/// writes and flushes may fail too, and nothing reads its file behind the
/// layer's back (no host file, no check).
impl crate::formats::ForeignImage for BlkdebugImage<crate::fs::AnyImage> {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.layer.check(IoType::Write, offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.layer.check(IoType::Flush, 0, 0)?;
        self.inner.flush()
    }
    fn storage(&self) -> &Arc<dyn Storage> {
        use crate::fs::AnyImage;
        match &self.inner {
            AnyImage::Qcow2(q) => q.file(),
            AnyImage::Raw(r) => r.storage(),
            AnyImage::Foreign(_, f) => f.storage(),
        }
    }
    fn cluster_size(&self) -> Option<u64> {
        use crate::fs::AnyImage;
        match &self.inner {
            AnyImage::Qcow2(q) => Some(q.cluster_size()),
            AnyImage::Raw(_) => None,
            AnyImage::Foreign(_, f) => f.cluster_size(),
        }
    }
    fn check(&self) -> Option<Result<crate::formats::CheckReport>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::RawImage;
    use crate::storage::MemStorage;

    fn options(pairs: &[(&str, &str)]) -> RuleOptions {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_file_rules_fail_covering_requests() {
        let mut rules = Rules::default();
        rules
            .parse_config(
                "# comment\n[inject-error]\nevent = \"none\"\nerrno = \"28\"\n\
                 sector = \"2\"\niotype = \"write\"\n\n[set-state]\nevent = \"l2_update\"\n\
                 new_state = \"2\"\n",
            )
            .unwrap();
        assert_eq!(rules.inject.len(), 1);
        assert_eq!(rules.set_state.len(), 1);
        let layer = Blkdebug::open(rules);
        let storage = BlkdebugStorage::new(Arc::new(MemStorage::new()), layer.clone());
        storage.write_at(&[1; 1024], 0).unwrap();
        let e = storage.write_at(&[1; 512], 1024).unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        storage.read_at(&mut [0; 512], 1024).unwrap();
        assert_eq!(layer.state(), 1);
        layer.fire(EVENTS.iter().position(|e| *e == "l2_update").unwrap());
        assert_eq!(layer.state(), 2);
    }

    #[test]
    fn once_rules_and_states() {
        let mut rules = Rules::default();
        rules
            .add_inject_error(&options(&[
                ("event", "none"),
                ("once", "on"),
                ("state", "1"),
            ]))
            .unwrap();
        rules
            .add_inject_error(&options(&[("event", "none"), ("state", "2")]))
            .unwrap();
        let layer = Blkdebug::open(rules);
        let image = BlkdebugImage::new(
            RawImage::new(Arc::new(MemStorage::new())).unwrap(),
            layer.clone(),
        );
        assert!(image.read_at(&mut [], 0).is_err());
        image.read_at(&mut [], 0).unwrap();
        assert!(image.extents(0, 0).is_ok());
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut rules = Rules::default();
        assert!(rules
            .add_inject_error(&options(&[("event", "bogus")]))
            .is_err());
        assert!(rules.add_inject_error(&options(&[("errno", "5")])).is_err());
        assert!(rules
            .add_inject_error(&options(&[("event", "none"), ("iotype", "x")]))
            .is_err());
        assert!(rules
            .add_inject_error(&options(&[("event", "none"), ("sector", "-1")]))
            .is_err());
        assert!(rules.parse_config("[nope]\n").is_err());
        assert!(rules.parse_config("key = 1\n").is_err());
    }
}
