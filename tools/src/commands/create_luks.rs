//! Creating a `luks` image: a LUKS1 header and its key material, then the
//! encrypted payload, as QEMU's crypto driver lays the file out.

use qcow::crypto::{luks, LuksOptions};
use qcow::Storage;

/// Bytes written at a time while laying out the header area.
const CHUNK: usize = 4096;

/// Writes a new LUKS volume of `size` payload bytes (rounded up to whole
/// sectors) into `storage`, key slot 0 opened by `password`. Only the
/// header and slot 0's key material are written; the other slots and the
/// payload stay holes, as QEMU leaves them.
pub fn create(
    storage: &dyn Storage,
    options: &LuksOptions,
    password: &[u8],
    size: u64,
) -> qcow::Result<()> {
    let volume = luks::create(options, password)?;
    storage.set_len(0)?;
    for (i, chunk) in volume.area.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            storage.write_at(chunk, (i * CHUNK) as u64)?;
        }
    }
    let payload = u64::from(volume.header.payload_offset_sector) * 512;
    storage.set_len(payload + size.div_ceil(512) * 512)?;
    storage.flush()
}
