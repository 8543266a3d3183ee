//! Directory records (ECMA-119 9.1): one record's fields, checked against
//! the record's own length.

/// The smallest record: 33 fixed bytes and a one-byte name.
pub const MIN_RECORD_LEN: usize = 34;
/// File flag: the record is a directory.
pub const FLAG_DIRECTORY: u8 = 0x02;
/// File flag: more records of the same file follow (multi-extent).
pub const FLAG_MULTI_EXTENT: u8 = 0x80;

/// One directory record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's length in bytes.
    pub length: usize,
    /// The first logical block of the data (after any extended attribute
    /// record).
    pub data_block: u32,
    /// The data length in bytes.
    pub data_length: u32,
    /// File flags.
    pub flags: u8,
    /// The file identifier as stored.
    pub name: &'a [u8],
    /// The system use area (SUSP entries).
    pub system_use: &'a [u8],
}

impl Record<'_> {
    /// Whether the record is a directory.
    pub fn is_dir(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }

    /// Whether the record is `.` or `..` (identifiers 0x00 and 0x01).
    pub fn is_dot(&self) -> bool {
        self.name == [0] || self.name == [1]
    }
}

/// Reads the record at the start of `bytes` (which runs to the end of
/// its directory). Returns why it is malformed otherwise.
pub fn parse(bytes: &[u8]) -> Result<Record<'_>, String> {
    let length = usize::from(*bytes.first().ok_or("empty record")?);
    if length < MIN_RECORD_LEN {
        return Err(format!("record length {length} is under {MIN_RECORD_LEN}"));
    }
    if length > bytes.len() {
        return Err(format!(
            "record length {length} runs past the directory's end ({} bytes left)",
            bytes.len()
        ));
    }
    let record = &bytes[..length];
    let ext_attr_blocks = u32::from(record[1]);
    let extent = u32::from_le_bytes(record[2..6].try_into().expect("4 bytes"));
    let data_block = extent
        .checked_add(ext_attr_blocks)
        .ok_or_else(|| format!("extent block {extent} overflows"))?;
    let data_length = u32::from_le_bytes(record[10..14].try_into().expect("4 bytes"));
    let name_len = usize::from(record[32]);
    if name_len == 0 {
        return Err("empty file identifier".to_string());
    }
    let name_end = 33 + name_len;
    if name_end > length {
        return Err(format!(
            "file identifier of {name_len} bytes runs past the record's {length}"
        ));
    }
    // A padding byte follows an identifier of even length.
    let system_use_start = (name_end + usize::from(name_len.is_multiple_of(2))).min(length);
    Ok(Record {
        length,
        data_block,
        data_length,
        flags: record[25],
        name: &record[33..name_end],
        system_use: &record[system_use_start..],
    })
}

/// An ISO 9660 identifier as a name: the `;N` version and a trailing dot
/// of an extensionless file dropped.
pub fn iso_name(identifier: &str) -> String {
    let base = match identifier.rfind(';') {
        Some(at) if identifier[at + 1..].bytes().all(|b| b.is_ascii_digit()) => &identifier[..at],
        _ => identifier,
    };
    base.strip_suffix('.').unwrap_or(base).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a record (as tests elsewhere in the crate need).
    pub fn record(name: &[u8], block: u32, length: u32, flags: u8, system_use: &[u8]) -> Vec<u8> {
        let pad = usize::from(name.len().is_multiple_of(2));
        let total = 33 + name.len() + pad + system_use.len();
        let mut bytes = vec![0u8; total];
        bytes[0] = u8::try_from(total).expect("test record under 256 bytes");
        bytes[2..6].copy_from_slice(&block.to_le_bytes());
        bytes[6..10].copy_from_slice(&block.to_be_bytes());
        bytes[10..14].copy_from_slice(&length.to_le_bytes());
        bytes[14..18].copy_from_slice(&length.to_be_bytes());
        bytes[25] = flags;
        bytes[32] = u8::try_from(name.len()).expect("short name");
        bytes[33..33 + name.len()].copy_from_slice(name);
        bytes[33 + name.len() + pad..].copy_from_slice(system_use);
        bytes
    }

    #[test]
    fn reads_fields_and_system_use() {
        let bytes = record(b"KERNEL.;1", 20, 4096, 0, b"NM\x06\x01\x00k");
        let rec = parse(&bytes).unwrap();
        assert_eq!(rec.data_block, 20);
        assert_eq!(rec.data_length, 4096);
        assert_eq!(rec.name, b"KERNEL.;1");
        assert_eq!(rec.system_use, b"NM\x06\x01\x00k");
        assert!(!rec.is_dir());
        assert_eq!(iso_name("KERNEL.;1"), "KERNEL");
        assert_eq!(iso_name("ISOLINUX.CFG;1"), "ISOLINUX.CFG");
        assert_eq!(iso_name("A;B"), "A;B");
    }

    #[test]
    fn refuses_short_long_and_overrunning_records() {
        let mut bytes = record(b"A", 1, 1, 0, b"");
        assert!(parse(&bytes[..10]).unwrap_err().contains("runs past"));
        bytes[0] = 3;
        assert!(parse(&bytes).unwrap_err().contains("under 34"));
        let mut bytes = record(b"A", 1, 1, 0, b"");
        bytes[32] = 200;
        assert!(parse(&bytes).unwrap_err().contains("identifier"));
        bytes[32] = 0;
        assert!(parse(&bytes).unwrap_err().contains("empty"));
        let mut bytes = record(b"A", u32::MAX, 1, 0, b"");
        bytes[1] = 1;
        assert!(parse(&bytes).unwrap_err().contains("overflows"));
    }
}
