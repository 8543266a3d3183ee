//! ACPI tables, so that a stock distribution kernel (whose virtio drivers
//! are modules and which lacks virtio_mmio's command-line option) finds
//! its CPUs, its interrupt controllers, the serial port and every disk:
//! RSDP (in the BIOS area, where Linux also scans), XSDT, FADT for
//! hardware-reduced ACPI, MADT with every vCPU's LAPIC, the IOAPIC and the
//! timer's interrupt override, and a DSDT describing COM1, each
//! virtio-mmio device (`LNRO0005`, as Linux's virtio_mmio driver matches),
//! the power button (`PNP0C0C`) and the Generic Event Device (`ACPI0013`)
//! whose `_EVT` notifies it and the VM generation ID device
//! (`\_SB.VGEN`, see `devices::vmgenid`), and `\_S5_`. The FADT points at the
//! hardware-reduced sleep control and status registers (see
//! `devices::ged`), through which the guest powers off.
//!
//! The DSDT's AML comes from the acpi_tables crate; the fixed-layout tables
//! are written here.

use acpi_tables::aml;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::ged::{GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID, SLEEP_TYPE_S5};
use crate::error::{Error, Result};
use crate::layout::{
    virtio_mmio_base, GED_GSI, GED_SIZE, GED_START, IOAPIC_START, LAPIC_START, SERIAL_GSI,
    SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE, VMGENID_START,
};

/// Where the RSDP goes (the tables follow it), in the BIOS area that the
/// e820 map leaves out of RAM.
pub const RSDP_START: u64 = 0x000e_0000;
/// End of the area the tables may use (the VM generation ID's page
/// follows).
const ACPI_END: u64 = VMGENID_START;

const OEM_ID: [u8; 6] = *b"RVMM  ";
const OEM_TABLE_ID: [u8; 8] = *b"VMMTABLE";
const CREATOR_ID: [u8; 4] = *b"RVMM";

/// The sum of `bytes` as ACPI checksums use it.
fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// A table: the 36-byte header, then `body`, checksum set.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = 0u8.wrapping_sub(sum(&t));
    t
}

/// The DSDT: COM1 and the virtio-mmio devices under `\_SB`.
pub fn dsdt(disks: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let com1_io = aml::IO::new(0x3f8, 0x3f8, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_GSI);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let hid = aml::Name::new("_HID".into(), &com1_hid);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &com1_crs);
    aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    for i in 0..disks {
        let base = virtio_mmio_base(i) as u32;
        let memory = aml::Memory32Fixed::new(true, base, VIRTIO_MMIO_SIZE as u32);
        let irq = aml::Interrupt::new(true, true, false, false, VIRTIO_FIRST_GSI + i as u32);
        let resources = aml::ResourceTemplate::new(vec![&memory, &irq]);
        let uid_value = i as u8;
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &uid_value);
        let cca = aml::Name::new("_CCA".into(), &aml::ONE);
        let crs = aml::Name::new("_CRS".into(), &resources);
        let path = format!("_SB_.V{i:03}");
        aml::Device::new(path.as_str().into(), vec![&hid, &uid, &cca, &crs])
            .to_aml_bytes(&mut body);
    }
    vmgenid_device(&mut body);
    power_button_and_ged(&mut body);
    table(b"DSDT", 2, &body)
}

/// The VM generation ID device as QEMU describes it and Linux's
/// `vmgenid` driver binds to it (by its `_CID`): `ADDR` returns the ID's
/// guest-physical address as a package of two integers, the low and the
/// high 32 bits.
fn vmgenid_device(body: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &"QEMUVGID");
    let cid = aml::Name::new("_CID".into(), &"VM_Gen_Counter");
    let ddn = aml::Name::new("_DDN".into(), &"VM_Gen_Counter");
    let low = VMGENID_START as u32;
    let high = (VMGENID_START >> 32) as u32;
    let address = aml::Package::new(vec![&low, &high]);
    let ret = aml::Return::new(&address);
    let addr = aml::Method::new("ADDR".into(), 0, false, vec![&ret]);
    aml::Device::new("_SB_.VGEN".into(), vec![&hid, &cid, &ddn, &addr]).to_aml_bytes(body);
}

/// The power button, the GED that notifies it, and `\_S5_`.
fn power_button_and_ged(body: &mut Vec<u8>) {
    let button_hid = aml::EISAName::new("PNP0C0C");
    let hid = aml::Name::new("_HID".into(), &button_hid);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(body);

    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let resources = aml::ResourceTemplate::new(vec![&irq]);
    let crs = aml::Name::new("_CRS".into(), &resources);
    let base = GED_START as u32;
    let size = GED_SIZE as u32;
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemMemory,
        &base,
        &size,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );
    // _EVT: Local0 = GDAT (reading clears it); if the power-button bit is
    // set, Notify(\_SB.PWRB, 0x80).
    let gdat = aml::Path::new("GDAT");
    let store = aml::Store::new(&aml::Local(0), &gdat);
    let bit = GED_EVENT_POWER_BUTTON;
    let and = aml::And::new(&aml::Local(1), &aml::Local(0), &bit);
    let pressed = aml::Equal::new(&aml::Local(1), &bit);
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify_value = 0x80u8;
    let notify = aml::Notify::new(&button, &notify_value);
    let when_pressed = aml::If::new(&pressed, vec![&notify]);
    // And if the generation bit is set, Notify(\_SB.VGEN, 0x80).
    let generation = GED_EVENT_VMGENID;
    let and_generation = aml::And::new(&aml::Local(2), &aml::Local(0), &generation);
    let changed = aml::Equal::new(&aml::Local(2), &generation);
    let vgen = aml::Path::new("\\_SB_.VGEN");
    let notify_vgen = aml::Notify::new(&vgen, &notify_value);
    let when_changed = aml::If::new(&changed, vec![&notify_vgen]);
    let evt = aml::Method::new(
        "_EVT".into(),
        1,
        true,
        vec![&store, &and, &when_pressed, &and_generation, &when_changed],
    );
    aml::Device::new(
        "_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    )
    .to_aml_bytes(body);

    let s5_type = SLEEP_TYPE_S5;
    let s5 = aml::Package::new(vec![&s5_type, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(body);
}

/// A Generic Address Structure for one byte-wide I/O port.
fn io_port_gas(port: u64) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = 1; // SystemIO
    gas[1] = 8; // bit width
    gas[3] = 1; // byte access
    gas[4..12].copy_from_slice(&port.to_le_bytes());
    gas
}

/// The FADT (revision 6) of a hardware-reduced platform.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut body = vec![0u8; 276 - 36];
    let at = |offset: usize| offset - 36;
    body[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    // IAPC_BOOT_ARCH: no VGA, no CMOS RTC to probe.
    body[at(109)..at(111)].copy_from_slice(&((1u16 << 2) | (1 << 5)).to_le_bytes());
    // Flags: HW_REDUCED_ACPI.
    body[at(112)..at(116)].copy_from_slice(&(1u32 << 20).to_le_bytes());
    body[at(131)] = 0; // FADT minor version
    body[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
    body[at(244)..at(256)].copy_from_slice(&io_port_gas(SLEEP_CONTROL_PORT));
    body[at(256)..at(268)].copy_from_slice(&io_port_gas(SLEEP_STATUS_PORT));
    body[at(268)..at(276)].copy_from_slice(b"RVMM_KVM");
    table(b"FACP", 6, &body)
}

/// The MADT: a LAPIC per vCPU, the IOAPIC, and IRQ 0 on GSI 2.
pub fn madt(cpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // no 8259s to use
    for id in 0..cpus {
        body.extend_from_slice(&[0, 8, id as u8, id as u8]);
        body.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    body.extend_from_slice(&[1, 12, cpus as u8, 0]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    body.extend_from_slice(&[2, 10, 0, 0]); // ISA IRQ 0 ->
    body.extend_from_slice(&2u32.to_le_bytes()); // GSI 2
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // NMI on every LAPIC's LINT1
    table(b"APIC", 5, &body)
}

/// The XSDT listing `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    table(b"XSDT", 1, &body)
}

/// The RSDP (revision 2) pointing at the XSDT.
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(&OEM_ID);
    r.push(2);
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r[8] = 0u8.wrapping_sub(sum(&r[..20]));
    r[32] = 0u8.wrapping_sub(sum(&r));
    r
}

/// Writes every table into guest memory; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u32, disks: usize) -> Result<u64> {
    let mut next = RSDP_START + 64;
    let mut place = |bytes: &[u8]| -> Result<u64> {
        let at = next;
        if at + bytes.len() as u64 > ACPI_END {
            return Err(Error::Memory("ACPI tables do not fit below 1 MiB".into()));
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| Error::Memory(format!("writing ACPI tables: {e}")))?;
        next = (at + bytes.len() as u64).next_multiple_of(16);
        Ok(at)
    };
    let dsdt_addr = place(&dsdt(disks))?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(cpus))?;
    let xsdt_addr = place(&xsdt(&[fadt_addr, madt_addr]))?;
    mem.write_slice(&rsdp(xsdt_addr), GuestAddress(RSDP_START))
        .map_err(|e| Error::Memory(format!("writing the RSDP: {e}")))?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        for t in [dsdt(3), fadt(0xe0040), madt(4), xsdt(&[1, 2])] {
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(&t[..4]));
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        assert_eq!(fadt(0).len(), 276);
        let r = rsdp(0x1234);
        assert_eq!((sum(&r[..20]), sum(&r), r.len()), (0, 0, 36));
        // One 8-byte LAPIC entry per vCPU.
        assert_eq!(madt(4).len(), 36 + 8 + 4 * 8 + 12 + 10 + 6);
        // The DSDT names each device and its _HID.
        let d = dsdt(2);
        let text = String::from_utf8_lossy(&d);
        assert!(text.contains("V000") && text.contains("V001") && text.contains("LNRO0005"));
        assert!(text.contains("ACPI0013") && text.contains("PWRB") && text.contains("_S5_"));
        // The sleep registers are I/O ports in the FADT.
        let f = fadt(0);
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            SLEEP_CONTROL_PORT
        );
    }

    #[test]
    fn vmgenid_device_is_what_linux_parses() {
        // Hand-decoded AML of \_SB.VGEN (ACPI 6.4, 20.2): Linux's vmgenid
        // driver binds by _CID and evaluates ADDR, which must return a
        // package of exactly two integers (address low, high 32 bits).
        let mut body = Vec::new();
        vmgenid_device(&mut body);
        let mut at = 0;
        let mut expect = |bytes: &[u8]| {
            assert_eq!(&body[at..at + bytes.len()], bytes, "at byte {at}");
            at += bytes.len();
        };
        // DeviceOp (ExtOpPrefix 0x5b, 0x82), a two-byte PkgLength (bits
        // 7-6 of the first byte: one more byte; its bits 3-0, the length's
        // low nibble; the next byte, the length >> 4; the length counts
        // itself and what follows), then the name \_SB_.VGEN as a
        // DualNamePrefix path.
        let length = body.len() - 2;
        assert!((64..4096).contains(&length));
        expect(&[
            0x5b,
            0x82,
            0x40 | (length & 0xf) as u8,
            (length >> 4) as u8,
            0x2e,
        ]);
        expect(b"_SB_VGEN");
        // Name(_HID, "QEMUVGID"): NameOp, NameSeg, StringPrefix, NUL.
        expect(&[0x08]);
        expect(b"_HID");
        expect(&[0x0d]);
        expect(b"QEMUVGID\0");
        expect(&[0x08]);
        expect(b"_CID");
        expect(&[0x0d]);
        expect(b"VM_Gen_Counter\0");
        expect(&[0x08]);
        expect(b"_DDN");
        expect(&[0x0d]);
        expect(b"VM_Gen_Counter\0");
        // Method(ADDR, 0, NotSerialized) { Return(Package(2) {
        // 0x000ff000, Zero }) }: MethodOp, PkgLength, NameSeg, flags 0,
        // ReturnOp, PackageOp, PkgLength, 2 elements, DWordPrefix +
        // value, ZeroOp.
        expect(&[0x14, 0x10]);
        expect(b"ADDR");
        expect(&[0x00, 0xa4, 0x12, 0x08, 0x02, 0x0c]);
        expect(&(VMGENID_START as u32).to_le_bytes());
        expect(&[0x00]);
        assert_eq!(at, body.len(), "trailing bytes");
        // And the whole DSDT carries it.
        let dsdt = dsdt(1);
        assert!(dsdt.windows(body.len()).any(|w| w == body.as_slice()));
    }

    #[test]
    fn tables_land_in_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let at = write_tables(&mem, 2, 19).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(at)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}

#[cfg(test)]
mod iasl {
    /// With acpica-tools installed (`apt-get install acpica-tools`), the
    /// tables disassemble without errors; skipped otherwise.
    #[test]
    fn iasl_accepts_the_tables() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("REQUIRE_IASL").is_none(),
                "iasl not installed (scripts/ensure-iasl.sh)"
            );
            eprintln!("iasl not installed: skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("dsdt.dat", super::dsdt(2)),
            ("facp.dat", super::fadt(0xe0040)),
            ("apic.dat", super::madt(2)),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}: {text}");
            let dsl = std::fs::read_to_string(path.with_extension("dsl")).unwrap();
            assert!(!dsl.contains("Error"), "{name}:\n{dsl}");
            if name == "dsdt.dat" {
                assert!(dsl.contains("LNRO0005") && dsl.contains("PNP0501"), "{dsl}");
                assert!(dsl.contains("0xD0001000"), "{dsl}");
                assert!(
                    dsl.contains("ACPI0013") && dsl.contains("Notify (\\_SB.PWRB, 0x80)"),
                    "{dsl}"
                );
                // The generation ID device as Linux's vmgenid driver finds
                // it: by _CID, ADDR a package of two integers (low, high),
                // notified from the GED's _EVT.
                for line in [
                    "Device (_SB.VGEN)",
                    "Name (_HID, \"QEMUVGID\")",
                    "Name (_CID, \"VM_Gen_Counter\")",
                    "Name (_DDN, \"VM_Gen_Counter\")",
                    "Method (ADDR, 0, NotSerialized)",
                    "Notify (\\_SB.VGEN, 0x80)",
                ] {
                    assert!(dsl.contains(line), "no {line:?} in\n{dsl}");
                }
                let compact: String = dsl.split_whitespace().collect();
                assert!(
                    compact.contains("Return(Package(0x02){0x000FF000,Zero})")
                        || compact.contains("Return(Package(0x02){0x000FF000,0x00000000})"),
                    "{dsl}"
                );
            }
        }
    }
}
