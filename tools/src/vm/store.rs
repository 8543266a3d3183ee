//! The store folder: `domains/NAME.xml` (definitions, written atomically),
//! `run/NAME/` (a running domain's run folder, mode 0700: api.sock, pid,
//! console.sock, console.log, vmm.log), `locks/NAME.lock` (one flock per
//! domain, held across a state change), `state/NAME` (why the domain last
//! stopped) and `next-id` (the counter of domain ids).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::xml::{parse_domain, DomainDef, DomainName, MAX_XML_BYTES};

/// Errors of store operations; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder operation failed.
    #[error("{action} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A stored definition does not parse (someone edited it by hand).
    #[error("stored definition '{}' is invalid: {reason}", path.display())]
    BadDefinition {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A domain's lock stayed taken too long.
    #[error("timed out waiting for the lock of domain '{0}'")]
    LockTimeout(String),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How long a state change waits for another one on the same domain.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The store folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The store folder when `-c` is not given: `$VM_DIR`, else `/var/lib/vm`
/// for root and `$XDG_DATA_HOME/vm` (else `~/.local/share/vm`) for others.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VM_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if super::sys::is_root() {
        return PathBuf::from("/var/lib/vm");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("vm");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/vm")
}

/// A domain's lock: held while the value lives.
#[derive(Debug)]
pub struct DomainLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed, mode 0700) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in ["", "domains", "run", "locks", "state"] {
            let path = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(io_error("cannot create folder", &path))?;
        }
        // Absolute, so the paths handed to a VMM stay true from any
        // folder.
        let dir = fs::canonicalize(dir).map_err(io_error("cannot open folder", dir))?;
        Ok(Self { dir })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The definition file of `name`.
    pub fn definition_path(&self, name: &DomainName) -> PathBuf {
        self.dir.join("domains").join(format!("{name}.xml"))
    }

    /// The run folder of `name`.
    pub fn run_dir(&self, name: &DomainName) -> PathBuf {
        self.dir.join("run").join(name.as_str())
    }

    /// Creates the run folder of `name` (mode 0700).
    pub fn make_run_dir(&self, name: &DomainName) -> Result<PathBuf, StoreError> {
        let path = self.run_dir(name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(io_error("cannot create folder", &path))?;
        Ok(path)
    }

    /// Takes the state-change lock of `name`, waiting up to a minute for
    /// another `vm` process that holds it.
    pub fn lock(&self, name: &DomainName) -> Result<DomainLock, StoreError> {
        let path = self.dir.join("locks").join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("cannot open lock", &path))?;
        let start = Instant::now();
        loop {
            if super::sys::try_lock_exclusive(&file).map_err(io_error("cannot lock", &path))? {
                return Ok(DomainLock { _file: file });
            }
            if start.elapsed() > LOCK_WAIT {
                return Err(StoreError::LockTimeout(name.to_string()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes `name`'s lock if nobody holds it; None otherwise.
    pub fn try_lock(&self, name: &DomainName) -> Option<DomainLock> {
        let path = self.dir.join("locks").join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .ok()?;
        super::sys::try_lock_exclusive(&file)
            .ok()?
            .then_some(DomainLock { _file: file })
    }

    /// Writes `name`'s definition atomically: a temporary file in the same
    /// folder, fsync, rename over the old one, fsync of the folder.
    /// A transient domain defined again becomes persistent.
    pub fn write_definition(&self, def: &DomainDef) -> Result<(), StoreError> {
        let path = self.definition_path(&def.name);
        write_atomically(&path, def.to_xml().as_bytes())?;
        let _ = fs::remove_file(self.transient_definition_path(&def.name));
        Ok(())
    }

    /// Where a transient domain's definition lives while it runs: in its
    /// run folder, so that the cleanup after its VMM ends removes it, as
    /// libvirt forgets a transient domain when it stops.
    pub fn transient_definition_path(&self, name: &DomainName) -> PathBuf {
        self.run_dir(name).join("domain.xml")
    }

    /// Whether `name` has a persistent definition (one that outlives its
    /// VMM).
    pub fn is_persistent(&self, name: &DomainName) -> bool {
        self.definition_path(name).exists()
    }

    /// Makes a running domain transient (virsh's undefine of an active
    /// domain): its definition moves into its run folder and goes when its
    /// VMM does.
    pub fn make_transient(&self, def: &DomainDef) -> Result<(), StoreError> {
        write_atomically(
            &self.transient_definition_path(&def.name),
            def.to_xml().as_bytes(),
        )?;
        self.remove_definition(&def.name)
    }

    /// Reads `name`'s definition, persistent or else transient; None if
    /// there is none.
    pub fn read_definition(&self, name: &DomainName) -> Result<Option<DomainDef>, StoreError> {
        let mut path = self.definition_path(name);
        if !path.exists() {
            path = self.transient_definition_path(name);
        }
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let def = parse_domain(&bytes).map_err(|e| StoreError::BadDefinition {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(def))
    }

    /// Every stored definition, persistent and transient, in no particular
    /// order.
    pub fn definitions(&self) -> Result<Vec<DomainDef>, StoreError> {
        let folder = self.dir.join("domains");
        let mut defs = Vec::new();
        for entry in fs::read_dir(&folder).map_err(io_error("cannot read folder", &folder))? {
            let entry = entry.map_err(io_error("cannot read folder", &folder))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".xml")) else {
                continue;
            };
            let Ok(name) = DomainName::new(stem) else {
                continue; // temporary files start with a dot
            };
            if let Some(def) = self.read_definition(&name)? {
                defs.push(def);
            }
        }
        let runs = self.dir.join("run");
        for entry in fs::read_dir(&runs).map_err(io_error("cannot read folder", &runs))? {
            let entry = entry.map_err(io_error("cannot read folder", &runs))?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| DomainName::new(n).ok())
            else {
                continue;
            };
            if self.is_persistent(&name) || !self.transient_definition_path(&name).exists() {
                continue;
            }
            if let Some(def) = self.read_definition(&name)? {
                defs.push(def);
            }
        }
        Ok(defs)
    }

    /// Removes `name`'s definition (and its last-stop record).
    pub fn remove_definition(&self, name: &DomainName) -> Result<(), StoreError> {
        let path = self.definition_path(name);
        fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
        let _ = fs::remove_file(self.state_path(name));
        sync_dir(&self.dir.join("domains"))
    }

    fn state_path(&self, name: &DomainName) -> PathBuf {
        self.dir.join("state").join(name.as_str())
    }

    /// Records why `name` last stopped (libvirt's shut-off reason number).
    /// A transient domain has no record: it is forgotten when it stops.
    pub fn set_shutoff_reason(&self, name: &DomainName, reason: u32) -> Result<(), StoreError> {
        if !self.is_persistent(name) {
            let _ = fs::remove_file(self.state_path(name));
            return Ok(());
        }
        write_atomically(&self.state_path(name), format!("{reason}\n").as_bytes())
    }

    /// Why `name` last stopped (0, unknown, if never recorded).
    pub fn shutoff_reason(&self, name: &DomainName) -> u32 {
        fs::read_to_string(self.state_path(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A new domain id (1, 2, ...), unique in this store: a counter file
    /// changed under its own lock.
    pub fn next_id(&self) -> Result<u32, StoreError> {
        let path = self.dir.join("next-id");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("cannot open", &path))?;
        super::sys::lock_exclusive(&file).map_err(io_error("cannot lock", &path))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io_error("cannot read", &path))?;
        let id: u32 = text.trim().parse().unwrap_or(1).max(1);
        let next = if id >= i32::MAX as u32 { 1 } else { id + 1 };
        file.set_len(0).map_err(io_error("cannot write", &path))?;
        let mut writer = &file;
        std::io::Seek::rewind(&mut writer).map_err(io_error("cannot write", &path))?;
        writer
            .write_all(format!("{next}\n").as_bytes())
            .map_err(io_error("cannot write", &path))?;
        Ok(id)
    }
}

/// Reads a file of at most [`MAX_XML_BYTES`] (+1 to tell it is over).
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(io_error("cannot open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("cannot read", path))?;
    Ok(bytes)
}

/// Writes `bytes` to `path` so that a reader sees the old or the new
/// contents, never a mix, and a crash keeps one of them.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = folder.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_error("cannot create", &temp))?;
        file.write_all(bytes)
            .map_err(io_error("cannot write", &temp))?;
        file.sync_all().map_err(io_error("cannot sync", &temp))?;
        fs::rename(&temp, path).map_err(io_error("cannot rename", path))?;
        sync_dir(folder)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// fsyncs a folder so a rename or removal in it is durable.
fn sync_dir(folder: &Path) -> Result<(), StoreError> {
    File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(io_error("cannot sync folder", folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str) -> DomainDef {
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
        );
        parse_domain(xml.as_bytes()).unwrap()
    }

    #[test]
    fn definitions_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = def("a");
        store.write_definition(&a).unwrap();
        store.write_definition(&def("b")).unwrap();
        assert_eq!(store.read_definition(&a.name).unwrap().unwrap(), a);
        let mut names: Vec<_> = store
            .definitions()
            .unwrap()
            .into_iter()
            .map(|d| d.name.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        store.remove_definition(&a.name).unwrap();
        assert!(store.read_definition(&a.name).unwrap().is_none());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("domains")).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temporary file is left: {leftovers:?}"
        );
    }

    #[test]
    fn ids_count_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_id().unwrap(), 1);
        assert_eq!(store.next_id().unwrap(), 2);
        assert_eq!(store.next_id().unwrap(), 3);
    }

    #[test]
    fn a_domain_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = DomainName::new("x").unwrap();
        let held = store.lock(&name).unwrap();
        let path = dir.path().join("locks/x.lock");
        let other = File::open(&path).unwrap();
        assert!(
            !crate::vm::sys::try_lock_exclusive(&other).unwrap(),
            "a second open file description cannot take it"
        );
        drop(held);
        assert!(crate::vm::sys::try_lock_exclusive(&other).unwrap());
    }

    #[test]
    fn shutoff_reason_defaults_to_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = DomainName::new("x").unwrap();
        store.write_definition(&def("x")).unwrap();
        assert_eq!(store.shutoff_reason(&name), 0);
        store.set_shutoff_reason(&name, 3).unwrap();
        assert_eq!(store.shutoff_reason(&name), 3);
    }

    #[test]
    fn a_transient_domain_keeps_no_shutoff_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = DomainName::new("x").unwrap();
        store.make_run_dir(&name).unwrap();
        store.write_definition(&def("x")).unwrap();
        store.make_transient(&def("x")).unwrap();
        assert!(!store.is_persistent(&name));
        assert_eq!(store.definitions().unwrap().len(), 1);
        store.set_shutoff_reason(&name, 3).unwrap();
        assert_eq!(store.shutoff_reason(&name), 0);
        store.write_definition(&def("x")).unwrap();
        assert!(store.is_persistent(&name));
        assert_eq!(store.definitions().unwrap().len(), 1);
    }
}
