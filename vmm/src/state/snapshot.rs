//! Cloud Hypervisor's snapshot layout, carrying our records: a directory
//! (`file://DIR` in vm.snapshot's destination_url and vm.restore's
//! source_url) holding
//!
//! - `config.json`: the VM's configuration (CH's VmConfig, as vm.info
//!   shows it);
//! - `state.json`: `{"vmm_state_version": 1, "records": "<hex>"}`, the
//!   machine's records but RAM (vCPUs, irqchip and timers, devices);
//! - `memory-ranges`: the RAM records (binary).

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;

use super::machine::{ConfigSummary, MachineState};
use super::StateError;

/// The configuration's file.
pub const CONFIG_FILE: &str = "config.json";
/// The machine state's file.
pub const STATE_FILE: &str = "state.json";
/// The RAM's file.
pub const MEMORY_FILE: &str = "memory-ranges";
/// The largest config.json or state.json read.
const MAX_JSON: u64 = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct StateJson {
    vmm_state_version: u32,
    records: String,
}

/// The directory of a `file://DIR` URL.
pub fn dir_of_url(url: &str) -> Result<PathBuf, String> {
    let path = url
        .strip_prefix("file://")
        .ok_or_else(|| format!("'{url}' is not a file:// URL"))?;
    if path.is_empty() {
        return Err(format!("'{url}' names no directory"));
    }
    Ok(PathBuf::from(path))
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Write(format!("{}: {e}", path.display()))
}

/// Writes the snapshot of a paused VM into `dir` (created if missing),
/// atomically: the files are written and synced in a temporary folder
/// beside `dir`, which then takes `dir`'s place by a rename, so a VMM
/// killed at any moment leaves the old snapshot or the new one, never a
/// mix (a killed write leaves its temporary folder, which the next write
/// removes). A `dir` holding files other than a snapshot's is refused.
/// Returns the bytes of RAM saved.
pub fn write_dir(
    dir: &Path,
    config_json: &[u8],
    machine: &MachineState,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| file_err(dir, "names no folder"))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| file_err(&parent, e))?;
    check_replaceable(dir)?;
    remove_leftovers(&parent, name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| file_err(&tmp, e))?;
    let written = write_files(&tmp, config_json, machine, mem);
    let saved = match written.and_then(|saved| sync_dir(&tmp).map(|()| saved)) {
        Ok(saved) => saved,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_files = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if had_files {
        std::fs::rename(dir, &old).map_err(|e| file_err(dir, e))?;
    }
    // rename() replaces a missing or empty folder.
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_files {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(file_err(dir, e));
    }
    sync_dir(&parent)?;
    if had_files {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(saved)
}

/// Refuses a `dir` that holds anything but a snapshot's files.
fn check_replaceable(dir: &Path) -> Result<(), StateError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if ![CONFIG_FILE, STATE_FILE, MEMORY_FILE]
            .iter()
            .any(|f| name == std::ffi::OsStr::new(f))
        {
            return Err(file_err(
                dir,
                format!(
                    "holds '{}', which is not a snapshot's file: refusing to replace it",
                    name.to_string_lossy()
                ),
            ));
        }
    }
    Ok(())
}

/// Removes the temporary folders of earlier writes of `name` that were
/// killed part-way.
fn remove_leftovers(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.old-")];
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if prefixes.iter().any(|p| {
            file_name
                .strip_prefix(p.as_str())
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        }) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_err(dir, e))
}

fn write_files(
    dir: &Path,
    config_json: &[u8],
    machine: &MachineState,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    let records = machine.to_bytes()?;
    let mut hex = String::with_capacity(records.len() * 2);
    for b in &records {
        hex.push_str(&format!("{b:02x}"));
    }
    let state = serde_json::to_vec(&StateJson {
        vmm_state_version: 1,
        records: hex,
    })
    .map_err(|e| StateError::Write(e.to_string()))?;
    write_file(&dir.join(CONFIG_FILE), config_json)?;
    write_file(&dir.join(STATE_FILE), &state)?;
    let path = dir.join(MEMORY_FILE);
    let file = std::fs::File::create(&path).map_err(|e| file_err(&path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let saved = super::memory::save(mem, machine.config, &mut out)?;
    let file = out.into_inner().map_err(|e| file_err(&path, e.error()))?;
    file.sync_all().map_err(|e| file_err(&path, e))?;
    Ok(saved)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut file = std::fs::File::create(path).map_err(|e| file_err(path, e))?;
    file.write_all(bytes).map_err(|e| file_err(path, e))?;
    file.sync_all().map_err(|e| file_err(path, e))
}

/// Reads a JSON file of at most 64 MiB.
pub fn read_json_file(path: &Path) -> Result<Vec<u8>, StateError> {
    let read_err = |e: std::io::Error| StateError::Read(format!("{}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_JSON {
        return Err(StateError::Read(format!(
            "{}: {len} bytes, more than {MAX_JSON}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(read_err)
}

/// The machine state in `dir`'s state.json, checked against `vm`.
pub fn read_machine(dir: &Path, vm: ConfigSummary) -> Result<MachineState, StateError> {
    let path = dir.join(STATE_FILE);
    let bytes = read_json_file(&path)?;
    let state: StateJson = serde_json::from_slice(&bytes)
        .map_err(|e| StateError::Read(format!("{}: {e}", path.display())))?;
    if state.vmm_state_version != 1 {
        return Err(StateError::Version {
            offset: 0,
            version: state.vmm_state_version.min(u32::from(u16::MAX)) as u16,
        });
    }
    MachineState::parse(&decode_hex(&state.records)?, vm)
}

/// Fills `mem` (zeroed) from `dir`'s memory-ranges, checked against `vm`.
pub fn read_memory(
    dir: &Path,
    vm: ConfigSummary,
    mem: &GuestMemoryMmap,
) -> Result<u64, StateError> {
    let path = dir.join(MEMORY_FILE);
    let file = std::fs::File::open(&path)
        .map_err(|e| StateError::Read(format!("{}: {e}", path.display())))?;
    super::memory::restore(&mut BufReader::with_capacity(1 << 20, file), vm, mem)
}

fn decode_hex(text: &str) -> Result<Vec<u8>, StateError> {
    let bad = || StateError::Read("state.json: records are not hexadecimal".into());
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hex() {
        assert_eq!(
            dir_of_url("file:///tmp/s").unwrap(),
            PathBuf::from("/tmp/s")
        );
        assert!(dir_of_url("http://x").is_err());
        assert!(dir_of_url("file://").is_err());
        assert_eq!(decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(decode_hex("0").is_err());
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn only_a_snapshot_folder_is_replaced_and_leftovers_go() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("snap");
        // Missing, empty, or holding a snapshot's files: replaceable.
        check_replaceable(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        check_replaceable(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"{}").unwrap();
        check_replaceable(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let err = check_replaceable(&dir).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        // A killed write's folders go; others' stay.
        for name in [".snap.tmp-12", ".snap.old-7", ".snap.tmp-x", ".other.tmp-3"] {
            std::fs::create_dir(root.path().join(name)).unwrap();
        }
        remove_leftovers(root.path(), "snap");
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other.tmp-3", ".snap.tmp-x", "snap"]);
    }
}
