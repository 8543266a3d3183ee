//! `img amend -o encrypt.state=...`: adding and erasing LUKS key slots of
//! an encrypted qcow2 image, with the rules and messages of QEMU's
//! `qcrypto_block_luks_amend_options`.

use anyhow::{anyhow, bail, Result};
use qcow::crypto::luks::{DEFAULT_ITER_TIME_MS, NUM_KEY_SLOTS};
use qcow::crypto::LuksHeader;
use qcow::image::Qcow2;

use crate::opts::secret::lookup;
use crate::opts::ParsedOptions;

/// The `encrypt.*` options `amend` takes.
pub const AMEND_KEYS: &[&str] = &[
    "encrypt.state",
    "encrypt.keyslot",
    "encrypt.old-secret",
    "encrypt.new-secret",
    "encrypt.iter-time",
];

/// One key slot change as the options ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotChange {
    /// `active` (add a key) or `inactive` (erase keys).
    pub activate: bool,
    /// `encrypt.keyslot`.
    pub keyslot: Option<u64>,
    /// `encrypt.old-secret` (an id).
    pub old_secret: Option<String>,
    /// `encrypt.new-secret` (an id).
    pub new_secret: Option<String>,
    /// `encrypt.iter-time`.
    pub iter_time: Option<u64>,
}

impl SlotChange {
    /// The change the parsed `-o` options describe.
    pub fn from_parsed(parsed: &ParsedOptions) -> Result<SlotChange> {
        let text = |k: &str| parsed.get(k).map(|v| v.raw.clone());
        let activate = match text("encrypt.state").as_deref() {
            Some("active") => true,
            Some("inactive") => false,
            Some(other) => bail!("Parameter 'state' does not accept value '{other}'"),
            None => bail!("Parameter 'state' is missing"),
        };
        Ok(SlotChange {
            activate,
            keyslot: parsed.get("encrypt.keyslot").and_then(|v| v.number),
            old_secret: text("encrypt.old-secret"),
            new_secret: text("encrypt.new-secret"),
            iter_time: parsed.get("encrypt.iter-time").and_then(|v| v.number),
        })
    }
}

fn checked_slot(slot: u64) -> Result<usize> {
    if slot >= NUM_KEY_SLOTS as u64 {
        bail!(
            "Invalid keyslot {slot} specified, must be between 0 and {}",
            NUM_KEY_SLOTS - 1
        );
    }
    Ok(slot as usize)
}

fn active_count(h: &LuksHeader) -> usize {
    h.slots.iter().filter(|s| s.active).count()
}

/// Applies `change` to the LUKS header of `image`, whose key is the
/// password `secret` (the image's `encrypt.key-secret`).
pub fn apply(image: &Qcow2, change: &SlotChange, secret: Option<&[u8]>, force: bool) -> Result<()> {
    let header = image
        .luks_header()?
        .ok_or_else(|| anyhow!("Can't amend encryption options - encryption not present"))?;
    if change.activate {
        add(image, &header, change, secret, force)
    } else {
        erase(image, &header, change, force)
    }
}

fn add(
    image: &Qcow2,
    header: &LuksHeader,
    change: &SlotChange,
    secret: Option<&[u8]>,
    force: bool,
) -> Result<()> {
    let Some(new_id) = &change.new_secret else {
        bail!("'new-secret' is required to activate a keyslot");
    };
    if change.old_secret.is_some() {
        bail!("'old-secret' must not be given when activating keyslots");
    }
    let slot = match change.keyslot {
        Some(s) => checked_slot(s)?,
        None => header
            .slots
            .iter()
            .position(|s| !s.active)
            .ok_or_else(|| anyhow!("Can't add a keyslot - all keyslots are in use"))?,
    };
    if !force && header.slots[slot].active {
        bail!("Refusing to overwrite active keyslot {slot} - please erase it first");
    }
    let password =
        secret.ok_or_else(|| anyhow!("Parameter 'encrypt.key-secret' is required for cipher"))?;
    let key = image
        .luks_master_key(password)
        .map_err(|e| anyhow!("{e}\nFailed to retrieve the master key"))?;
    let new_password = lookup(new_id)?;
    image.luks_store_key(
        slot,
        &key,
        &new_password,
        change.iter_time.unwrap_or(DEFAULT_ITER_TIME_MS),
    )?;
    Ok(())
}

fn erase(image: &Qcow2, header: &LuksHeader, change: &SlotChange, force: bool) -> Result<()> {
    if change.new_secret.is_some() {
        bail!("'new-secret' must not be given when erasing keyslots");
    }
    if change.iter_time.is_some() {
        bail!("'iter-time' must not be given when erasing keyslots");
    }
    let old_password = change.old_secret.as_deref().map(lookup).transpose()?;
    if let Some(slot) = change.keyslot {
        let slot = checked_slot(slot)?;
        if let Some(pw) = &old_password {
            if !image.luks_slot_opens(slot, pw)? {
                bail!(
                    "Given keyslot {slot} doesn't contain the given old password for erase operation"
                );
            }
        }
        if !force && !header.slots[slot].active {
            bail!("Given keyslot {slot} is already erased (inactive) ");
        }
        if !force && active_count(header) == 1 {
            bail!(
                "Attempt to erase the only active keyslot {slot} which will erase all the data \
                 in the image irreversibly - refusing operation"
            );
        }
        image.luks_erase_key(slot)?;
    } else if let Some(pw) = &old_password {
        let mut matching = Vec::new();
        for slot in 0..NUM_KEY_SLOTS {
            if image.luks_slot_opens(slot, pw)? {
                matching.push(slot);
            }
        }
        if matching.is_empty() {
            bail!("No keyslots match given (old) password for erase operation");
        }
        if !force && matching.len() == active_count(header) {
            bail!(
                "All the active keyslots match the (old) password that was given and erasing \
                 them will erase all the data in the image irreversibly - refusing operation"
            );
        }
        for slot in matching {
            image.luks_erase_key(slot)?;
        }
    } else {
        bail!(
            "To erase keyslot(s), either explicit keyslot index or the password currently \
             contained in them must be given"
        );
    }
    Ok(())
}
