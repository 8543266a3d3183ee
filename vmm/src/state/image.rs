//! The VM state in a qcow2 image's VM-state area (the area past the
//! virtual disk that QEMU's savevm uses; `qcow::image::VmStateWriter`
//! writes it and a full internal snapshot records its size). The format
//! is ours, not QEMU's:
//!
//! ```text
//! magic        8 bytes  "VMMSTATE"
//! version      u32 LE   AREA_VERSION
//! crc          u32 LE   CRC-32 (IEEE) of the 32-byte header with this field zero
//! machine_len  u64 LE   bytes of machine records that follow, at most MAX_MACHINE
//! reserved     u64      zero
//! machine records (MachineState::to_bytes: vCPUs, irqchip, timers, devices)
//! RAM records (memory::save: the configuration, runs of non-zero pages, end)
//! ```
//!
//! The area is untrusted when read back (anyone may have written the
//! image): the header's checksum and bounds are checked before anything is
//! allocated, the records carry their own CRCs, the machine and the RAM are
//! checked against the VM's configuration, and the RAM stream must end
//! exactly where the snapshot's `vm_state_size` says.

use std::io::{Read, Write};

use qcow::image::{Qcow2, VmStateWriter};
use vm_memory::GuestMemoryMmap;

use super::machine::{ConfigSummary, MachineState};
use super::StateError;

/// Bytes at the start of a record its index reads: the header and a RAM
/// run's guest address.
const RECORD_PREFIX: u64 = super::record::HEADER_LEN as u64 + 8;

/// The area's magic.
pub const AREA_MAGIC: [u8; 8] = *b"VMMSTATE";
/// The area format's version; a reader refuses any other.
pub const AREA_VERSION: u32 = 1;
/// Bytes of the area's header.
pub const AREA_HEADER_LEN: u64 = 32;
/// The most machine-record bytes read (256 vCPUs' records fit easily).
pub const MAX_MACHINE: u64 = 64 << 20;

fn header(machine_len: u64) -> [u8; AREA_HEADER_LEN as usize] {
    let mut head = [0u8; AREA_HEADER_LEN as usize];
    head[..8].copy_from_slice(&AREA_MAGIC);
    head[8..12].copy_from_slice(&AREA_VERSION.to_le_bytes());
    head[16..24].copy_from_slice(&machine_len.to_le_bytes());
    let crc = crc32fast::hash(&head);
    head[12..16].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Checks a header; returns the machine records' length.
fn parse_header(head: &[u8; AREA_HEADER_LEN as usize], state_size: u64) -> Result<u64, StateError> {
    if head[..8] != AREA_MAGIC {
        return Err(StateError::BadMagic { offset: 0 });
    }
    let mut zeroed = *head;
    zeroed[12..16].fill(0);
    let crc = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if crc32fast::hash(&zeroed) != crc {
        return Err(StateError::Checksum { offset: 0 });
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if version != AREA_VERSION {
        return Err(StateError::Version {
            offset: 0,
            version: version.min(u32::from(u16::MAX)) as u16,
        });
    }
    let machine_len = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    if machine_len > MAX_MACHINE || AREA_HEADER_LEN + machine_len > state_size {
        return Err(StateError::Layout(format!(
            "the machine records' length {machine_len} does not fit the {state_size}-byte state"
        )));
    }
    Ok(machine_len)
}

/// `std::io::Write` over a VM-state writer.
struct AreaWriter<'a, 'b>(&'b mut VmStateWriter<'a>);

impl Write for AreaWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the machine and its RAM into `writer` (a fresh VM-state area).
/// Returns the bytes of RAM saved.
pub fn write_area(
    writer: &mut VmStateWriter<'_>,
    machine: &MachineState,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    let records = machine.to_bytes()?;
    let write_err = |e: qcow::Error| StateError::Write(format!("the image's VM-state area: {e}"));
    // The header and the machine records are read first by a revert, and
    // each RAM record's header by its index: those pages are left in the
    // page cache.
    writer.keep_cached(AREA_HEADER_LEN + records.len() as u64);
    writer
        .write_all(&header(records.len() as u64))
        .map_err(write_err)?;
    writer.write_all(&records).map_err(write_err)?;
    // Unbuffered: the writer gathers the records into its own buffers,
    // which go to the disk as they are (a buffer between would copy
    // every byte of RAM once more).
    super::memory::save_marking(
        mem,
        machine.config,
        &mut AreaWriter(writer),
        |out: &mut AreaWriter| out.0.keep_cached(RECORD_PREFIX),
    )
}

/// The bytes [`write_area`] writes, in memory (for seeds and tests).
pub fn encode_area(machine: &MachineState, mem: &GuestMemoryMmap) -> Result<Vec<u8>, StateError> {
    let records = machine.to_bytes()?;
    let mut out = header(records.len() as u64).to_vec();
    out.extend_from_slice(&records);
    super::memory::save(mem, machine.config, &mut out)?;
    Ok(out)
}

/// `std::io::Read` over a snapshot's VM-state area, from `pos` to `end`.
struct AreaReader<'a> {
    image: &'a Qcow2,
    snapshot: &'a str,
    pos: u64,
    end: u64,
}

impl Read for AreaReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.image
            .read_vm_state(self.snapshot, self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A VM state found in an image, checked but for its RAM.
pub struct AreaState {
    /// The machine, checked against the VM's configuration.
    pub machine: MachineState,
    /// Where its RAM is.
    pub ram: RamPlace,
}

/// Where the RAM stream of a VM-state area is.
#[derive(Debug, Clone, Copy)]
pub struct RamPlace {
    /// Where the RAM stream starts in the area.
    ram_start: u64,
    /// The area's length (the snapshot's vm_state_size).
    state_size: u64,
}

impl RamPlace {
    /// The RAM stream's start and end in the area.
    pub fn stream(&self) -> (u64, u64) {
        (self.ram_start, self.state_size)
    }
}

/// Reads and checks the machine state of snapshot `name` in `image`,
/// for a VM configured as `vm`.
pub fn read_machine(image: &Qcow2, name: &str, vm: ConfigSummary) -> Result<AreaState, StateError> {
    let read_err = |e: qcow::Error| StateError::Read(format!("snapshot '{name}': {e}"));
    let snapshot = image.find_snapshot_entry(name).map_err(read_err)?;
    let state_size = snapshot.vm_state_size;
    if state_size < AREA_HEADER_LEN {
        return Err(StateError::Read(format!(
            "snapshot '{name}' holds no VM state (a disk-only snapshot)"
        )));
    }
    let mut head = [0u8; AREA_HEADER_LEN as usize];
    image.read_vm_state(name, 0, &mut head).map_err(read_err)?;
    let machine_len = parse_header(&head, state_size)?;
    let mut records = vec![0u8; machine_len as usize];
    image
        .read_vm_state(name, AREA_HEADER_LEN, &mut records)
        .map_err(read_err)?;
    let machine = MachineState::parse(&records, vm)?;
    Ok(AreaState {
        machine,
        ram: RamPlace {
            ram_start: AREA_HEADER_LEN + machine_len,
            state_size,
        },
    })
}

/// Fills `mem` from the RAM of snapshot `name` at `ram` (found by
/// [`read_machine`]), for a VM configured as `vm`: `mem` is zeroed, or
/// with `over` holds other data that is overwritten or zeroed
/// ([`super::memory::restore_over`]). Returns the bytes of RAM written.
pub fn read_memory(
    image: &Qcow2,
    name: &str,
    ram: RamPlace,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
    over: bool,
) -> Result<u64, StateError> {
    // Unbuffered: a record's header is one small read and its payload
    // (up to 4 MiB of RAM) one read straight into the record's buffer,
    // without a copy through a buffer between.
    let mut input = AreaReader {
        image,
        snapshot: name,
        pos: ram.ram_start,
        end: ram.state_size,
    };
    // memory::restore refuses bytes after the end record.
    if over {
        super::memory::restore_over(&mut input, vm, mem)
    } else {
        super::memory::restore(&mut input, vm, mem)
    }
}

/// Checks a VM-state area held in memory (for the fuzz target): the
/// header, the machine records and the RAM stream, for a VM configured as
/// `vm`, into `mem`.
pub fn check_area(
    bytes: &[u8],
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    let state_size = bytes.len() as u64;
    if state_size < AREA_HEADER_LEN {
        return Err(StateError::Truncated { offset: 0 });
    }
    let head: [u8; AREA_HEADER_LEN as usize] = bytes[..AREA_HEADER_LEN as usize]
        .try_into()
        .expect("32 bytes");
    let machine_len = parse_header(&head, state_size)?;
    let ram_start = (AREA_HEADER_LEN + machine_len) as usize;
    let machine = MachineState::parse(&bytes[AREA_HEADER_LEN as usize..ram_start], vm)?;
    super::memory::restore(&mut &bytes[ram_start..], machine.config, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let head = header(1000);
        assert_eq!(parse_header(&head, 5000).unwrap(), 1000);
        // Longer than the state.
        assert!(matches!(
            parse_header(&head, 1000),
            Err(StateError::Layout(_))
        ));
        let mut bad = head;
        bad[20] ^= 1;
        assert!(matches!(
            parse_header(&bad, 5000),
            Err(StateError::Checksum { .. })
        ));
        let mut bad = head;
        bad[0] = b'X';
        assert!(matches!(
            parse_header(&bad, 5000),
            Err(StateError::BadMagic { .. })
        ));
        let huge = header(MAX_MACHINE + 1);
        assert!(matches!(
            parse_header(&huge, u64::MAX),
            Err(StateError::Layout(_))
        ));
    }
}
