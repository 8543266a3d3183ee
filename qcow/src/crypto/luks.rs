//! LUKS version 1 volumes: the on-disk header (`parse` / `write`), key
//! slots unlocked by a password (PBKDF2, the anti-forensic splitter, the
//! slot's key material decrypted with the volume's own cipher), new
//! volumes laid out as QEMU lays them out, and key slots added or erased.
//! The header and key material are reached through a caller's read and
//! write functions (offsets from the header's start): this module does no
//! I/O.

use byteorder::{BigEndian, ByteOrder};

use super::afsplit;
use super::algs::{CipherAlg, CipherMode, HashAlg, IvGenAlg};
use super::cipher::{CipherSpec, SectorCipher, SECTOR_SIZE};
use super::hash::{iterations_per_second, pbkdf2};
use super::random_bytes;
use crate::error::{Error, Result};

/// The magic of a LUKS header.
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Bytes of the binary header.
pub const HEADER_LEN: usize = 592;
/// Key slots of a LUKS1 header.
pub const NUM_KEY_SLOTS: usize = 8;
/// Anti-forensic stripes per key slot.
pub const STRIPES: u32 = 4000;
/// Where key material starts: the first 4 KiB hold the header.
pub const KEY_SLOT_OFFSET: u64 = 4096;
/// Longest master key accepted (AES-256 in XTS mode).
pub const MAX_MASTER_KEY_LEN: u32 = 64;
/// Fewest PBKDF2 iterations of a key slot or the master key digest.
pub const MIN_ITERATIONS: u64 = 1000;
/// qemu-img's default PBKDF2 time per key slot, in milliseconds.
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;

const SALT_LEN: usize = 32;
/// Times erased key material is overwritten with random bytes.
const ERASE_PASSES: usize = 40;
const DIGEST_LEN: usize = 20;
const SLOT_ENABLED: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;
const HEADER_SECTORS: u64 = KEY_SLOT_OFFSET / SECTOR_SIZE as u64;

/// One key slot of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlot {
    /// Whether the slot holds a key.
    pub active: bool,
    /// PBKDF2 iterations of the slot's password.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Sector (from the header's start) of the slot's key material.
    pub key_offset_sector: u32,
    /// Anti-forensic stripes (always [`STRIPES`]).
    pub stripes: u32,
}

/// A validated LUKS1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// The payload cipher, mode and IV generator.
    pub spec: CipherSpec,
    /// The hash of PBKDF2 and the splitter.
    pub hash: HashAlg,
    /// `cipher_mode` as recorded (`xts-plain64`).
    pub cipher_mode_name: String,
    /// First sector of the payload (0 in a detached header).
    pub payload_offset_sector: u32,
    /// Bytes of the master key.
    pub master_key_len: u32,
    /// PBKDF2 digest of the master key.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Its salt.
    pub mk_digest_salt: [u8; SALT_LEN],
    /// Its iterations.
    pub mk_digest_iterations: u32,
    /// The volume's UUID text.
    pub uuid: String,
    /// The key slots.
    pub slots: [KeySlot; NUM_KEY_SLOTS],
}

/// A volume's master key (wiped when dropped).
pub struct MasterKey(Vec<u8>);

impl MasterKey {
    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> Error {
    Error::LuksHeader {
        field,
        reason: reason.into(),
    }
}

fn c_string(field: &'static str, raw: &[u8]) -> Result<String> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad(field, format!("LUKS header {field} is not NUL terminated")))?;
    String::from_utf8(raw[..end].to_vec()).map_err(|_| bad(field, "not UTF-8"))
}

/// Parses a `cipher_mode` string (`xts-plain64`, `cbc-essiv:sha256`).
fn parse_mode(text: &str) -> Result<(CipherMode, IvGenAlg, Option<HashAlg>)> {
    let (mode, ivgen) = text.split_once('-').ok_or_else(|| {
        bad(
            "cipher_mode",
            format!("Unexpected cipher mode string format '{text}'"),
        )
    })?;
    let (ivgen, ivhash) = match ivgen.split_once(':') {
        Some((i, h)) => (i, Some(HashAlg::parse(h)?)),
        None => (ivgen, None),
    };
    Ok((CipherMode::parse(mode)?, IvGenAlg::parse(ivgen)?, ivhash))
}

impl LuksHeader {
    /// Parses and validates the first [`HEADER_LEN`] bytes of `buf`; the
    /// header and its key material must fit in `area_len` bytes.
    pub fn parse(buf: &[u8], area_len: u64) -> Result<LuksHeader> {
        if buf.len() < HEADER_LEN || buf[..6] != LUKS_MAGIC {
            return Err(bad("magic", "Volume is not in LUKS format"));
        }
        let version = BigEndian::read_u16(&buf[6..8]);
        if version != 1 {
            return Err(bad(
                "version",
                format!("LUKS version {version} is not supported"),
            ));
        }
        let cipher_name = c_string("cipher_name", &buf[8..40])?;
        let cipher_mode_name = c_string("cipher_mode", &buf[40..72])?;
        let hash_spec = c_string("hash_spec", &buf[72..104])?;
        let payload_offset_sector = BigEndian::read_u32(&buf[104..108]);
        let master_key_len = BigEndian::read_u32(&buf[108..112]);
        if master_key_len == 0 || master_key_len > MAX_MASTER_KEY_LEN {
            return Err(bad(
                "key_bytes",
                format!("master key length {master_key_len} is not supported"),
            ));
        }
        let (mode, ivgen, ivgen_hash) = parse_mode(&cipher_mode_name)?;
        let cipher_key_len = match mode {
            CipherMode::Xts => master_key_len as usize / 2,
            _ => master_key_len as usize,
        };
        let spec = CipherSpec {
            alg: CipherAlg::from_luks(&cipher_name, cipher_key_len)?,
            mode,
            ivgen,
            ivgen_hash,
        };
        if spec.key_len() != master_key_len as usize {
            return Err(bad(
                "key_bytes",
                format!("{master_key_len} does not fit {cipher_name}-{cipher_mode_name}"),
            ));
        }
        spec.validate()?;
        let hash = HashAlg::parse(&hash_spec)?;
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(&buf[112..132]);
        let mut mk_digest_salt = [0u8; SALT_LEN];
        mk_digest_salt.copy_from_slice(&buf[132..164]);
        let mk_digest_iterations = BigEndian::read_u32(&buf[164..168]);
        let uuid = c_string("uuid", &buf[168..208])?;
        let mut slots = [KeySlot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_offset_sector: 0,
            stripes: 0,
        }; NUM_KEY_SLOTS];
        for (i, slot) in slots.iter_mut().enumerate() {
            let s = &buf[208 + i * 48..208 + (i + 1) * 48];
            let state = BigEndian::read_u32(&s[0..4]);
            slot.active = match state {
                SLOT_ENABLED => true,
                SLOT_DISABLED => false,
                other => {
                    return Err(bad(
                        "key_slot",
                        format!("Keyslot {i} has an invalid state {other:#x}"),
                    ))
                }
            };
            slot.iterations = BigEndian::read_u32(&s[4..8]);
            slot.salt.copy_from_slice(&s[8..40]);
            slot.key_offset_sector = BigEndian::read_u32(&s[40..44]);
            slot.stripes = BigEndian::read_u32(&s[44..48]);
        }
        let header = LuksHeader {
            spec,
            hash,
            cipher_mode_name,
            payload_offset_sector,
            master_key_len,
            mk_digest,
            mk_digest_salt,
            mk_digest_iterations,
            uuid,
            slots,
        };
        header.check_layout(area_len)?;
        Ok(header)
    }

    /// QEMU's checks of where key material lies: after the header, inside
    /// the area, before the payload, never overlapping.
    fn check_layout(&self, area_len: u64) -> Result<()> {
        let detached = self.payload_offset_sector == 0;
        if !detached && u64::from(self.payload_offset_sector) < HEADER_SECTORS {
            return Err(bad(
                "payload_offset",
                "LUKS payload is overlapping with the header",
            ));
        }
        let len = self.material_sectors();
        for (i, s) in self.slots.iter().enumerate() {
            if s.stripes != STRIPES {
                return Err(bad(
                    "stripes",
                    format!(
                        "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                        s.stripes
                    ),
                ));
            }
            let start = u64::from(s.key_offset_sector);
            if start < HEADER_SECTORS {
                return Err(bad(
                    "key_offset",
                    format!("Keyslot {i} is overlapping with the LUKS header"),
                ));
            }
            if !detached && start + len > u64::from(self.payload_offset_sector) {
                return Err(bad(
                    "key_offset",
                    format!("Keyslot {i} is overlapping with the encrypted payload"),
                ));
            }
            if (start + len) * SECTOR_SIZE as u64 > area_len {
                return Err(bad(
                    "key_offset",
                    format!("Keyslot {i} lies past the end of the header area"),
                ));
            }
            for (j, t) in self.slots.iter().enumerate().skip(i + 1) {
                let start2 = u64::from(t.key_offset_sector);
                if start < start2 + len && start2 < start + len {
                    return Err(bad(
                        "key_offset",
                        format!("Keyslots {i} and {j} are overlapping in the header"),
                    ));
                }
            }
            if s.active && s.iterations == 0 {
                return Err(bad(
                    "iterations",
                    format!("Keyslot {i} has no PBKDF2 iterations"),
                ));
            }
        }
        Ok(())
    }

    /// Bytes of one slot's key material.
    pub fn material_len(&self) -> usize {
        self.master_key_len as usize * STRIPES as usize
    }

    /// Sectors one slot's key material occupies.
    fn material_sectors(&self) -> u64 {
        (self.material_len() as u64).div_ceil(SECTOR_SIZE as u64)
    }

    /// The binary header.
    pub fn write(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[..6].copy_from_slice(&LUKS_MAGIC);
        BigEndian::write_u16(&mut buf[6..8], 1);
        let mut put = |range: std::ops::Range<usize>, s: &str| {
            let n = s.len().min(range.len() - 1);
            buf[range.start..range.start + n].copy_from_slice(&s.as_bytes()[..n]);
        };
        put(8..40, self.spec.alg.luks_name());
        put(40..72, &self.cipher_mode_name);
        put(72..104, self.hash.name());
        put(168..208, &self.uuid);
        BigEndian::write_u32(&mut buf[104..108], self.payload_offset_sector);
        BigEndian::write_u32(&mut buf[108..112], self.master_key_len);
        buf[112..132].copy_from_slice(&self.mk_digest);
        buf[132..164].copy_from_slice(&self.mk_digest_salt);
        BigEndian::write_u32(&mut buf[164..168], self.mk_digest_iterations);
        for (i, s) in self.slots.iter().enumerate() {
            let o = 208 + i * 48;
            let state = if s.active {
                SLOT_ENABLED
            } else {
                SLOT_DISABLED
            };
            BigEndian::write_u32(&mut buf[o..o + 4], state);
            BigEndian::write_u32(&mut buf[o + 4..o + 8], s.iterations);
            buf[o + 8..o + 40].copy_from_slice(&s.salt);
            BigEndian::write_u32(&mut buf[o + 40..o + 44], s.key_offset_sector);
            BigEndian::write_u32(&mut buf[o + 44..o + 48], s.stripes);
        }
        buf
    }

    /// Bytes from the header's start to the end of the last key material
    /// (what a qcow2 image reserves for it).
    pub fn area_len(&self) -> u64 {
        area_len_for(self.master_key_len as usize)
    }

    /// Sectors between two slots' key material: the material rounded up
    /// to the header's size, as cryptsetup and QEMU lay it out.
    fn slot_stride(&self) -> u64 {
        self.material_sectors().div_ceil(HEADER_SECTORS) * HEADER_SECTORS
    }

    /// The payload cipher keyed with `key`.
    pub fn payload_cipher(&self, key: &MasterKey) -> Result<SectorCipher> {
        SectorCipher::new(&self.spec, key.bytes())
    }

    /// Tries `password` on one slot: the master key if it opens it.
    fn try_slot(
        &self,
        slot: &KeySlot,
        password: &[u8],
        read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<Option<MasterKey>> {
        let klen = self.master_key_len as usize;
        let mut slot_key = vec![0u8; klen];
        pbkdf2(
            self.hash,
            password,
            &slot.salt,
            slot.iterations,
            &mut slot_key,
        );
        let mut material = vec![0u8; self.material_sectors() as usize * SECTOR_SIZE];
        read(
            u64::from(slot.key_offset_sector) * SECTOR_SIZE as u64,
            &mut material,
        )?;
        SectorCipher::new(&self.spec, &slot_key)?.decrypt(&mut material, 0);
        slot_key.fill(0);
        let key = MasterKey(afsplit::merge(
            self.hash,
            klen,
            &material[..self.material_len()],
        ));
        material.fill(0);
        Ok(self.key_matches(&key).then_some(key))
    }

    fn key_matches(&self, key: &MasterKey) -> bool {
        let mut d = [0u8; DIGEST_LEN];
        pbkdf2(
            self.hash,
            key.bytes(),
            &self.mk_digest_salt,
            self.mk_digest_iterations,
            &mut d,
        );
        d == self.mk_digest
    }

    /// Unlocks the master key with `password`, trying every active slot;
    /// `read` reads bytes at an offset from the header's start.
    pub fn unlock(
        &self,
        password: &[u8],
        read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<MasterKey> {
        self.unlock_slot(password, read).map(|(_, k)| k)
    }

    /// [`LuksHeader::unlock`], with the number of the slot that opened.
    pub fn unlock_slot(
        &self,
        password: &[u8],
        read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<(usize, MasterKey)> {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.active {
                if let Some(key) = self.try_slot(slot, password, read)? {
                    return Ok((i, key));
                }
            }
        }
        Err(Error::InvalidPassword)
    }

    /// Whether `password` opens slot `index` (false for inactive slots).
    pub fn slot_opens(
        &self,
        index: usize,
        password: &[u8],
        read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<bool> {
        let slot = &self.slots[index];
        Ok(slot.active && self.try_slot(slot, password, read)?.is_some())
    }

    /// Stores `key` in slot `index` under `password`, with PBKDF2
    /// iterations for `iter_time_ms` of this machine's time; writes the
    /// key material through `write` (offset from the header's start) and
    /// marks the slot active. The caller writes the header afterwards.
    pub fn store_key(
        &mut self,
        index: usize,
        key: &MasterKey,
        password: &[u8],
        iter_time_ms: u64,
        write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let klen = self.master_key_len as usize;
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let per_second = iterations_per_second(self.hash, password, &salt, klen);
        let iterations = scale_iterations(per_second, iter_time_ms)?.max(MIN_ITERATIONS);
        let mut slot_key = vec![0u8; klen];
        pbkdf2(self.hash, password, &salt, iterations as u32, &mut slot_key);
        let mut random = vec![0u8; self.material_len() - klen];
        random_bytes(&mut random)?;
        random.extend_from_slice(&[0u8].repeat(klen));
        let mut material = afsplit::split(self.hash, key.bytes(), random);
        material.resize(self.material_sectors() as usize * SECTOR_SIZE, 0);
        SectorCipher::new(&self.spec, &slot_key)?.encrypt(&mut material, 0);
        slot_key.fill(0);
        let material_len = self.material_len();
        let slot = &mut self.slots[index];
        write(
            u64::from(slot.key_offset_sector) * SECTOR_SIZE as u64,
            &material[..material_len],
        )?;
        slot.salt = salt;
        slot.iterations = iterations as u32;
        slot.active = true;
        Ok(())
    }

    /// Erases slot `index`: its key material is overwritten with random
    /// bytes and the slot marked inactive. The caller writes the header.
    pub fn erase_key(
        &mut self,
        index: usize,
        write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut garbage = vec![0u8; self.material_len()];
        let at = u64::from(self.slots[index].key_offset_sector) * SECTOR_SIZE as u64;
        // As QEMU (and cryptsetup): overwrite the material many times.
        for _ in 0..ERASE_PASSES {
            random_bytes(&mut garbage)?;
            write(at, &garbage)?;
        }
        let slot = &mut self.slots[index];
        slot.active = false;
        slot.iterations = 0;
        slot.salt = [0; SALT_LEN];
        Ok(())
    }

    /// Whether `key` is this volume's master key.
    pub fn verify_key(&self, key: &MasterKey) -> bool {
        self.key_matches(key)
    }
}

/// Bytes of the header area (header and eight slots of key material) of a
/// volume whose master key is `master_key_len` bytes: where its payload
/// starts.
pub fn area_len_for(master_key_len: usize) -> u64 {
    let material = (master_key_len as u64 * u64::from(STRIPES)).div_ceil(SECTOR_SIZE as u64);
    let stride = material.div_ceil(HEADER_SECTORS) * HEADER_SECTORS;
    (HEADER_SECTORS + NUM_KEY_SLOTS as u64 * stride) * SECTOR_SIZE as u64
}

/// PBKDF2 iterations for `iter_time_ms` at `per_second`, as QEMU scales.
fn scale_iterations(per_second: u64, iter_time_ms: u64) -> Result<u64> {
    let iterations = per_second.checked_mul(iter_time_ms).ok_or_else(|| {
        bad(
            "iterations",
            format!("PBKDF iterations {per_second} too large to scale"),
        )
    })? / 1000;
    if iterations > u64::from(u32::MAX) {
        return Err(bad(
            "iterations",
            format!("PBKDF iterations {iterations} larger than {}", u32::MAX),
        ));
    }
    Ok(iterations)
}

/// What a new LUKS volume uses (qemu-img's `encrypt.*` create options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuksOptions {
    /// Payload cipher, mode and IV generator.
    pub spec: CipherSpec,
    /// Hash of PBKDF2 and the splitter.
    pub hash: HashAlg,
    /// PBKDF2 time per key, in milliseconds.
    pub iter_time_ms: u64,
}

impl Default for LuksOptions {
    fn default() -> Self {
        LuksOptions {
            spec: CipherSpec {
                alg: CipherAlg::Aes256,
                mode: CipherMode::Xts,
                ivgen: IvGenAlg::Plain64,
                ivgen_hash: None,
            },
            hash: HashAlg::Sha256,
            iter_time_ms: DEFAULT_ITER_TIME_MS,
        }
    }
}

/// A new volume: its header and the bytes of the whole header area (key
/// material of slot 0 included, the other slots zero), and its key.
pub struct NewVolume {
    /// The header, slot 0 active.
    pub header: LuksHeader,
    /// The header area: header, then every slot's key material.
    pub area: Vec<u8>,
    /// The master key.
    pub key: MasterKey,
}

/// Makes a new volume as QEMU's `qcrypto_block_luks_create` does: random
/// master key and salts, PBKDF2 iterations measured on this machine,
/// slot 0 holding the key under `password`. `detached` leaves the payload
/// offset 0 (a qcow2 image's header, whose payload lies elsewhere, is not
/// detached in QEMU: its payload offset follows the key material).
pub fn create(opts: &LuksOptions, password: &[u8]) -> Result<NewVolume> {
    let mut spec = opts.spec;
    if spec.ivgen == IvGenAlg::Essiv && spec.ivgen_hash.is_none() {
        spec.ivgen_hash = Some(HashAlg::Sha256);
    }
    spec.validate()?;
    if opts.iter_time_ms == 0 {
        return Err(bad("iter-time", "must be positive"));
    }
    let cipher_mode_name = match spec.ivgen_hash {
        Some(h) => format!("{}-{}:{}", spec.mode.name(), spec.ivgen.name(), h.name()),
        None => format!("{}-{}", spec.mode.name(), spec.ivgen.name()),
    };
    let klen = spec.key_len();
    let mut key = vec![0u8; klen];
    random_bytes(&mut key)?;
    let key = MasterKey(key);
    let mut mk_digest_salt = [0u8; SALT_LEN];
    random_bytes(&mut mk_digest_salt)?;
    let per_second = iterations_per_second(opts.hash, key.bytes(), &mk_digest_salt, DIGEST_LEN);
    // cryptsetup's (and QEMU's) eighth: all eight slots in one second.
    let mk_iterations = (scale_iterations(per_second, opts.iter_time_ms)? / 8).max(MIN_ITERATIONS);
    let mut mk_digest = [0u8; DIGEST_LEN];
    pbkdf2(
        opts.hash,
        key.bytes(),
        &mk_digest_salt,
        mk_iterations as u32,
        &mut mk_digest,
    );
    let mut header = LuksHeader {
        spec,
        hash: opts.hash,
        cipher_mode_name,
        payload_offset_sector: 0,
        master_key_len: klen as u32,
        mk_digest,
        mk_digest_salt,
        mk_digest_iterations: mk_iterations as u32,
        uuid: new_uuid()?,
        slots: [KeySlot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_offset_sector: 0,
            stripes: STRIPES,
        }; NUM_KEY_SLOTS],
    };
    let stride = header.slot_stride();
    for (i, s) in header.slots.iter_mut().enumerate() {
        s.key_offset_sector = (HEADER_SECTORS + i as u64 * stride) as u32;
    }
    header.payload_offset_sector = (HEADER_SECTORS + NUM_KEY_SLOTS as u64 * stride) as u32;
    let mut area = vec![0u8; header.area_len() as usize];
    header.store_key(0, &key, password, opts.iter_time_ms, &mut |off, data| {
        area[off as usize..off as usize + data.len()].copy_from_slice(data);
        Ok(())
    })?;
    area[..HEADER_LEN].copy_from_slice(&header.write());
    Ok(NewVolume { header, area, key })
}

/// A random (version 4) UUID in its text form.
fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> LuksOptions {
        LuksOptions {
            iter_time_ms: 1,
            ..LuksOptions::default()
        }
    }

    fn reader(area: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<()> + '_ {
        move |off, buf| {
            buf.copy_from_slice(&area[off as usize..off as usize + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn a_new_volume_parses_back_and_unlocks_with_its_password_only() {
        let v = create(&quick(), b"astrochicken").unwrap();
        assert_eq!(v.area.len() as u64, v.header.area_len());
        assert_eq!(area_len_for(64), 2_068_480);
        // QEMU's layout for aes-256-xts: slots of 504 sectors after 8.
        assert_eq!(v.header.slots[1].key_offset_sector, 8 + 504);
        assert_eq!(v.header.payload_offset_sector, 8 + 8 * 504);
        let h = LuksHeader::parse(&v.area, v.area.len() as u64).unwrap();
        assert_eq!(h, v.header);
        assert_eq!(h.cipher_mode_name, "xts-plain64");
        let key = h.unlock(b"astrochicken", &mut reader(&v.area)).unwrap();
        assert_eq!(key.bytes(), v.key.bytes());
        assert!(matches!(
            h.unlock(b"platypus", &mut reader(&v.area)),
            Err(Error::InvalidPassword)
        ));
    }

    #[test]
    fn slots_are_added_and_erased() {
        let mut v = create(&quick(), b"one").unwrap();
        let mut area = v.area.clone();
        let mut w = |off: u64, data: &[u8]| {
            area[off as usize..off as usize + data.len()].copy_from_slice(data);
            Ok(())
        };
        v.header.store_key(3, &v.key, b"two", 1, &mut w).unwrap();
        v.header.erase_key(0, &mut w).unwrap();
        area[..HEADER_LEN].copy_from_slice(&v.header.write());
        let h = LuksHeader::parse(&area, area.len() as u64).unwrap();
        assert_eq!(h.unlock_slot(b"two", &mut reader(&area)).unwrap().0, 3);
        assert!(h.unlock(b"one", &mut reader(&area)).is_err());
    }

    #[test]
    fn cbc_essiv_volumes_record_their_hash() {
        let mut o = quick();
        o.spec = CipherSpec {
            alg: CipherAlg::Aes128,
            mode: CipherMode::Cbc,
            ivgen: IvGenAlg::Essiv,
            ivgen_hash: None,
        };
        o.hash = HashAlg::Sha1;
        let v = create(&o, b"pw").unwrap();
        let h = LuksHeader::parse(&v.area, v.area.len() as u64).unwrap();
        assert_eq!(h.cipher_mode_name, "cbc-essiv:sha256");
        assert!(h.unlock(b"pw", &mut reader(&v.area)).is_ok());
    }

    #[test]
    fn damaged_headers_are_refused_with_qemus_reasons() {
        let v = create(&quick(), b"pw").unwrap();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut a = v.area.clone();
            f(&mut a);
            LuksHeader::parse(&a, a.len() as u64)
                .unwrap_err()
                .to_string()
        };
        assert!(with(&|a| a[0] = b'X').contains("not in LUKS format"));
        assert!(with(&|a| a[7] = 2).contains("LUKS version 2 is not supported"));
        assert!(with(&|a| a[8..40].fill(b'a')).contains("not NUL terminated"));
        assert!(
            with(&|a| BigEndian::write_u32(&mut a[208 + 44..208 + 48], 7)).contains("stripes 7")
        );
        assert!(
            with(&|a| BigEndian::write_u32(&mut a[208 + 48 + 40..208 + 48 + 44], 8))
                .contains("Keyslots 0 and 1 are overlapping")
        );
        assert!(with(&|a| BigEndian::write_u32(&mut a[108..112], 100_000))
            .contains("master key length"));
        let short = LuksHeader::parse(&v.area, 8192).unwrap_err().to_string();
        assert!(short.contains("past the end"), "{short}");
    }
}
