//! A small model of QEMU's QObject values and their two printers.
//!
//! qemu-img builds its JSON reports as QObjects: a `QDict` is a hash table
//! of 512 buckets, iterated bucket by bucket (and, within a bucket, newest
//! entry first), so keys come out in an order fixed by the hash of their
//! names, not by insertion. This module reproduces that order, the pretty
//! printer (`qobject_to_json_pretty`: four-space indent, empty containers
//! still broken over two lines, non-ASCII escaped as `\uXXXX`), and the
//! human dump used for "Format specific information" (`dump_qobject`).

/// Number of hash buckets of a QEMU `QDict`.
const QDICT_BUCKET_MAX: u32 = 512;

/// A JSON-like value as QEMU represents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QObject {
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A string.
    Str(String),
    /// An ordered list.
    List(Vec<QObject>),
    /// A dictionary.
    Dict(QDict),
}

impl From<bool> for QObject {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<i64> for QObject {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u64> for QObject {
    fn from(value: u64) -> Self {
        Self::UInt(value)
    }
}

impl From<u32> for QObject {
    fn from(value: u32) -> Self {
        Self::UInt(u64::from(value))
    }
}

impl From<&str> for QObject {
    fn from(value: &str) -> Self {
        Self::Str(value.to_owned())
    }
}

impl From<String> for QObject {
    fn from(value: String) -> Self {
        Self::Str(value)
    }
}

impl From<QDict> for QObject {
    fn from(value: QDict) -> Self {
        Self::Dict(value)
    }
}

impl From<Vec<QObject>> for QObject {
    fn from(value: Vec<QObject>) -> Self {
        Self::List(value)
    }
}

/// A dictionary that remembers insertion order and iterates in QEMU's
/// hash order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QDict {
    entries: Vec<(String, QObject)>,
}

impl QDict {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `key` (a replaced key keeps its position, as in
    /// QEMU).
    pub fn put(&mut self, key: &str, value: impl Into<QObject>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_owned(), value)),
        }
    }

    /// Inserts `key` only when `value` is `Some`, as QAPI does for
    /// optional members.
    pub fn put_opt<T: Into<QObject>>(&mut self, key: &str, value: Option<T>) {
        if let Some(value) = value {
            self.put(key, value);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&QObject> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Entries in the order QEMU iterates them: by bucket, and within a
    /// bucket the most recently inserted first.
    pub fn iter_qemu_order(&self) -> impl Iterator<Item = (&str, &QObject)> {
        let mut order: Vec<(u32, usize)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(index, (key, _))| (qdict_bucket(key), index))
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        order.into_iter().map(move |(_, index)| {
            let (key, value) = &self.entries[index];
            (key.as_str(), value)
        })
    }
}

/// QEMU's `tdb_hash` of a key, reduced to a bucket index.
pub fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &byte) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(byte) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % QDICT_BUCKET_MAX
}

/// Renders `value` as `qobject_to_json_pretty` does (no trailing newline).
pub fn to_json_pretty(value: &QObject) -> String {
    let mut out = String::new();
    write_json(value, 0, &mut out);
    out
}

/// Renders `value` on one line as `qobject_to_json` does (the form of a
/// `json:{...}` file name): `{"k": v, "k2": v2}`, keys in QEMU's order.
pub fn to_json_compact(value: &QObject) -> String {
    let mut out = String::new();
    write_json_compact(value, &mut out);
    out
}

fn write_json_compact(value: &QObject, out: &mut String) {
    match value {
        QObject::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_compact(item, out);
            }
            out.push(']');
        }
        QObject::Dict(dict) => {
            out.push('{');
            for (i, (key, item)) in dict.iter_qemu_order().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_string(key, out);
                out.push_str(": ");
                write_json_compact(item, out);
            }
            out.push('}');
        }
        scalar => write_json(scalar, 0, out),
    }
}

fn newline_indent(out: &mut String, indent: usize) {
    out.push('\n');
    for _ in 0..indent {
        out.push_str("    ");
    }
}

fn write_json(value: &QObject, indent: usize, out: &mut String) {
    match value {
        QObject::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        QObject::Int(n) => out.push_str(&n.to_string()),
        QObject::UInt(n) => out.push_str(&n.to_string()),
        QObject::Str(s) => write_json_string(s, out),
        QObject::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, indent + 1);
                write_json(item, indent + 1, out);
            }
            newline_indent(out, indent);
            out.push(']');
        }
        QObject::Dict(dict) => {
            out.push('{');
            for (i, (key, item)) in dict.iter_qemu_order().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, indent + 1);
                write_json_string(key, out);
                out.push_str(": ");
                write_json(item, indent + 1, out);
            }
            newline_indent(out, indent);
            out.push('}');
        }
    }
}

/// QEMU's `quoted_str`: escapes quote, backslash and the usual control
/// characters; everything else outside printable ASCII as `\uXXXX`
/// (uppercase hex, surrogate pairs beyond the BMP).
fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='\u{7e}' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04X}", unit));
                }
            }
        }
    }
    out.push('"');
}

/// Renders `value` as QEMU's `dump_qobject` does for human output: each
/// dict entry as `key: value` (dashes in keys become spaces), list items
/// as `[i]: value`, nested containers on the following lines one level
/// (four spaces) deeper.
pub fn dump_human(value: &QObject, indentation: usize) -> String {
    let mut out = String::new();
    dump(value, indentation, &mut out);
    out
}

fn dump(value: &QObject, indentation: usize, out: &mut String) {
    match value {
        QObject::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        QObject::Int(n) => out.push_str(&n.to_string()),
        QObject::UInt(n) => out.push_str(&n.to_string()),
        QObject::Str(s) => out.push_str(s),
        QObject::List(items) => {
            for (i, item) in items.iter().enumerate() {
                dump_entry(&format!("[{i}]"), item, indentation, out);
            }
        }
        QObject::Dict(dict) => {
            for (key, item) in dict.iter_qemu_order() {
                dump_entry(&key.replace('-', " "), item, indentation, out);
            }
        }
    }
}

fn dump_entry(label: &str, item: &QObject, indentation: usize, out: &mut String) {
    let composite = matches!(item, QObject::List(_) | QObject::Dict(_));
    out.push_str(&" ".repeat(indentation * 4));
    out.push_str(label);
    out.push(':');
    out.push(if composite { '\n' } else { ' ' });
    dump(item, indentation + 1, out);
    if !composite {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_is_qemus_json_file_name() {
        let mut file = QDict::new();
        file.put("driver", "file");
        file.put("filename", "q1.qcow2");
        let mut d = QDict::new();
        d.put("driver", "qcow2");
        d.put("file", QObject::Dict(file));
        d.put("encrypt.key-secret", "sec0");
        assert_eq!(
            to_json_compact(&QObject::Dict(d)),
            r#"{"encrypt.key-secret": "sec0", "driver": "qcow2", "file": {"driver": "file", "filename": "q1.qcow2"}}"#
        );
    }

    #[test]
    fn buckets_order_like_qemu() {
        // Key order of `qemu-img info --output=json` on a qcow2 image.
        let keys = [
            "children",
            "virtual-size",
            "filename",
            "cluster-size",
            "format",
            "actual-size",
            "format-specific",
            "dirty-flag",
        ];
        let buckets: Vec<u32> = keys.iter().map(|k| qdict_bucket(k)).collect();
        assert_eq!(buckets, vec![206, 309, 313, 316, 337, 351, 354, 501]);
    }

    #[test]
    fn same_bucket_newest_first() {
        // "size" and "preallocation" share bucket 318.
        assert_eq!(qdict_bucket("size"), qdict_bucket("preallocation"));
        let mut dict = QDict::new();
        dict.put("size", 1u64);
        dict.put("preallocation", "off");
        let keys: Vec<&str> = dict.iter_qemu_order().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["preallocation", "size"]);
    }

    #[test]
    fn pretty_json_shapes() {
        let mut inner = QDict::new();
        inner.put("type", "file");
        inner.put("data", QDict::new());
        let mut dict = QDict::new();
        dict.put("children", Vec::<QObject>::new());
        dict.put("format-specific", inner);
        dict.put("filename", "\u{fc} \"q\\x\u{1F600}\n");
        assert_eq!(
            to_json_pretty(&QObject::Dict(dict)),
            "{\n    \"children\": [\n    ],\n    \"filename\": \"\\u00FC \\\"q\\\\x\\uD83D\\uDE00\\n\",\n    \
             \"format-specific\": {\n        \"type\": \"file\",\n        \"data\": {\n        }\n    }\n}"
        );
    }

    #[test]
    fn human_dump_shapes() {
        let mut bitmap = QDict::new();
        bitmap.put("name", "b0");
        bitmap.put("granularity", 65536u64);
        bitmap.put("flags", vec![QObject::from("auto")]);
        let mut data = QDict::new();
        data.put("compat", "1.1");
        data.put("bitmaps", vec![QObject::Dict(bitmap)]);
        data.put("lazy-refcounts", false);
        assert_eq!(
            dump_human(&QObject::Dict(data), 1),
            "    compat: 1.1\n    lazy refcounts: false\n    bitmaps:\n        [0]:\n            \
             flags:\n                [0]: auto\n            name: b0\n            granularity: 65536\n"
        );
    }
}
