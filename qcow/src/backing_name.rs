//! Where a backing file name recorded in an image leads: a plain name is
//! a file, relative names resolved against the folder of the image that
//! records it; a `json:{...}` name (as `qemu-img create -b 'json:{...}'`
//! stores one) is QEMU's options, read as they are, not relative to any
//! folder, and may put a raw window (`offset`/`size`) over its file.
//!
//! This crate does not parse JSON itself: the program registers the
//! parser it has for such names once ([`set_json_parser`]); without one a
//! `json:` name is a file name like any other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::fs::{open_storage, resolve, Format};
use crate::raw_window::{RawWindow, Window};
use crate::storage::Storage;

/// What a backing file name names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingTarget {
    /// The file to open.
    pub path: PathBuf,
    /// The format driver the name gives, if any (it overrides the one
    /// recorded next to the name).
    pub format: Option<Format>,
    /// A raw window over the file, if the name puts one there.
    pub window: Option<Window>,
}

/// Reads a `json:` name into its target.
pub type JsonParser = fn(&str) -> Result<BackingTarget>;

static JSON_PARSER: OnceLock<JsonParser> = OnceLock::new();

/// Registers the parser of `json:` backing names (the first call wins).
pub fn set_json_parser(parser: JsonParser) {
    let _ = JSON_PARSER.set(parser);
}

/// The target of the backing name `name` recorded by an image in `dir`.
pub fn target(dir: &Path, name: &str) -> Result<BackingTarget> {
    if name.starts_with("json:") {
        if let Some(parse) = JSON_PARSER.get() {
            return parse(name);
        }
    }
    Ok(BackingTarget {
        path: resolve(dir, name),
        format: None,
        window: None,
    })
}

impl BackingTarget {
    /// Opens the target's file as storage, under its window if it has one.
    pub fn open_storage(&self, writable: bool) -> Result<Arc<dyn Storage>> {
        let storage = open_storage(&self.path, writable)?;
        match self.window {
            Some(w) => Ok(Arc::new(RawWindow::new(storage, w)?)),
            None => Ok(storage),
        }
    }

    /// The format to open it with: the name's own, else the one recorded
    /// next to the name.
    pub fn format_or(&self, recorded: Option<&str>) -> Result<Option<Format>> {
        match (self.format, recorded) {
            (Some(f), _) => Ok(Some(f)),
            (None, Some(name)) => Format::parse(name).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// An error for a `json:` name a parser refuses.
pub fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::Backing {
        name: name.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_resolve_against_the_folder() {
        let t = target(Path::new("/d"), "b.qcow2").unwrap();
        assert_eq!(t.path, PathBuf::from("/d/b.qcow2"));
        let t = target(Path::new("/d"), "/e/b.qcow2").unwrap();
        assert_eq!(t.path, PathBuf::from("/e/b.qcow2"));
        assert_eq!((t.format, t.window), (None, None));
    }
}
