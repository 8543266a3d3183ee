//! The report of `img info`: plain data mirroring qemu's `BlockGraphInfo`
//! and its human and JSON renderings, byte for byte as qemu-img 10 prints
//! them (including the `Child node '/file':` block and, with
//! `--backing-chain`, one entry per image separated by a blank line or
//! gathered in a JSON array).

use super::qobject::{dump_human, to_json_pretty, QDict, QObject};
use crate::opts::{Compat, CompressionType};
use crate::size::size_to_str;

/// What `img info` knows about one node (an image format or protocol
/// layer). Optional fields are omitted from the output when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    /// Name as given on the command line (or as the parent refers to it).
    pub filename: String,
    /// Format name: `qcow2`, `raw`, or `file` for the protocol node.
    pub format: String,
    /// qcow2: the dirty bit (shown as "cleanly shut down: no").
    pub dirty_flag: Option<bool>,
    /// Bytes allocated on the host (`st_blocks * 512`); `None` prints
    /// "disk size: unavailable".
    pub actual_size: Option<u64>,
    /// Guest-visible size in bytes (file length for a protocol node).
    pub virtual_size: u64,
    /// qcow2: cluster size in bytes.
    pub cluster_size: Option<u64>,
    /// True for encrypted images (human output shows it only when true).
    pub encrypted: Option<bool>,
    /// Whether the image is compressed (formats such as dmg; unused here).
    pub compressed: Option<bool>,
    /// Backing file name as stored in the image.
    pub backing_filename: Option<String>,
    /// Backing file name resolved relative to the image; `None` with a
    /// backing file prints "(cannot determine actual path)".
    pub full_backing_filename: Option<String>,
    /// Backing file format as stored in the image.
    pub backing_filename_format: Option<String>,
    /// Internal snapshots; `None` or empty when there are none.
    pub snapshots: Option<Vec<SnapshotInfo>>,
    /// Format-specific details.
    pub format_specific: Option<FormatSpecific>,
    /// Child nodes (`file` for the image file under a format node).
    pub children: Vec<ChildInfo>,
}

/// A named child of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Role of the child: `file`, `data-file`, ...
    pub name: String,
    /// The child node.
    pub info: ImageInfo,
}

/// One internal snapshot (qemu's `SnapshotInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// Unique ID string (`"1"`).
    pub id: String,
    /// User-given name.
    pub name: String,
    /// Size of the saved VM state in bytes.
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: i64,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock at creation, seconds.
    pub vm_clock_sec: i64,
    /// Guest clock at creation, nanoseconds part.
    pub vm_clock_nsec: u32,
    /// Instruction count, when the snapshot recorded one.
    pub icount: Option<u64>,
}

/// The `format-specific` member, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatSpecific {
    /// `"type": "qcow2"`.
    Qcow2(Qcow2Info),
    /// `"type": "file"` (the protocol node).
    File(FileInfo),
    /// Another format's section (`"type": "vmdk"`, ...), as its module
    /// of `qcow::formats` describes it.
    Other {
        /// The `type` tag.
        type_name: &'static str,
        /// The `data` member.
        data: QDict,
    },
}

/// qcow2 details (qemu's `ImageInfoSpecificQCow2`).
///
/// qemu fills it by version: compat 0.10 images have only `compat`,
/// `refcount_bits` and `compression_type`; compat 1.1 images also have
/// `lazy_refcounts`, `corrupt` and `extended_l2` (always `Some`),
/// `data_file`/`data_file_raw` when there is an external data file, and
/// `bitmaps` when the image has persistent bitmaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    /// Compatibility level.
    pub compat: Compat,
    /// External data file name from the header extension.
    pub data_file: Option<String>,
    /// The data-file-raw bit.
    pub data_file_raw: Option<bool>,
    /// Extended L2 entries in use.
    pub extended_l2: Option<bool>,
    /// Lazy refcounts bit.
    pub lazy_refcounts: Option<bool>,
    /// Corrupt bit.
    pub corrupt: Option<bool>,
    /// Refcount width in bits.
    pub refcount_bits: u64,
    /// Persistent dirty bitmaps.
    pub bitmaps: Option<Vec<BitmapInfo>>,
    /// Compression type.
    pub compression_type: CompressionType,
    /// The `encrypt` member of encrypted images (see [`super::encrypt`]).
    pub encrypt: Option<QDict>,
}

impl Qcow2Info {
    /// The fields qemu always reports for `compat`: for 1.1 the three
    /// feature bits are present and false; the rest is unset.
    pub fn new(compat: Compat, refcount_bits: u64, compression_type: CompressionType) -> Self {
        let v3_flag = match compat {
            Compat::V0_10 => None,
            Compat::V1_1 => Some(false),
        };
        Self {
            compat,
            data_file: None,
            data_file_raw: None,
            extended_l2: v3_flag,
            lazy_refcounts: v3_flag,
            corrupt: v3_flag,
            refcount_bits,
            bitmaps: None,
            compression_type,
            encrypt: None,
        }
    }
}

/// One persistent bitmap (qemu's `Qcow2BitmapInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// Bitmap name.
    pub name: String,
    /// Bytes covered by one bit.
    pub granularity: u32,
    /// Flags: `"in-use"`, `"auto"`.
    pub flags: Vec<String>,
}

/// Protocol-node details (qemu's `ImageInfoSpecificFile`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileInfo {
    /// Extent size hint, where the filesystem has one set.
    pub extent_size_hint: Option<u64>,
}

impl ImageInfo {
    /// The protocol node of a plain file, as qemu-img shows it under
    /// `Child node '/file':`.
    pub fn file_node(filename: &str, length: u64, actual_size: Option<u64>) -> Self {
        Self {
            filename: filename.to_owned(),
            format: "file".to_owned(),
            dirty_flag: Some(false),
            actual_size,
            virtual_size: length,
            format_specific: Some(FormatSpecific::File(FileInfo::default())),
            ..Self::default()
        }
    }

    /// The QObject qemu-img serializes (members inserted in QAPI order).
    pub fn to_qobject(&self) -> QObject {
        let mut dict = QDict::new();
        dict.put("filename", self.filename.as_str());
        dict.put("format", self.format.as_str());
        dict.put_opt("dirty-flag", self.dirty_flag);
        dict.put_opt("actual-size", self.actual_size);
        dict.put("virtual-size", self.virtual_size);
        dict.put_opt("cluster-size", self.cluster_size);
        dict.put_opt("encrypted", self.encrypted);
        dict.put_opt("compressed", self.compressed);
        dict.put_opt("backing-filename", self.backing_filename.as_deref());
        dict.put_opt(
            "full-backing-filename",
            self.full_backing_filename.as_deref(),
        );
        dict.put_opt(
            "backing-filename-format",
            self.backing_filename_format.as_deref(),
        );
        if let Some(snapshots) = self.snapshots.as_ref().filter(|s| !s.is_empty()) {
            let list: Vec<QObject> = snapshots.iter().map(SnapshotInfo::to_qobject).collect();
            dict.put("snapshots", list);
        }
        if let Some(specific) = &self.format_specific {
            dict.put("format-specific", specific.to_qobject());
        }
        let children: Vec<QObject> = self
            .children
            .iter()
            .map(|child| {
                let mut entry = QDict::new();
                entry.put("name", child.name.as_str());
                entry.put("info", child.info.to_qobject());
                QObject::Dict(entry)
            })
            .collect();
        dict.put("children", children);
        QObject::Dict(dict)
    }

    /// `img info --output=json`: the pretty JSON and a newline.
    pub fn render_json(&self) -> String {
        format!("{}\n", to_json_pretty(&self.to_qobject()))
    }

    /// `img info` human output, snapshot dates in local time.
    pub fn render_human(&self) -> String {
        self.render_human_with(&super::localtime::format_local)
    }

    /// Human output with a caller-chosen date formatter (seconds since the
    /// epoch to `YYYY-MM-DD HH:MM:SS`).
    pub fn render_human_with(&self, format_date: &dyn Fn(i64) -> String) -> String {
        let mut out = String::new();
        self.dump_human(0, "/", format_date, &mut out);
        out
    }

    /// qemu-img's `dump_human_image_info`: this node, then each child
    /// under `Child node 'PATHNAME':`, one level deeper.
    fn dump_human(
        &self,
        indentation: usize,
        path: &str,
        format_date: &dyn Fn(i64) -> String,
        out: &mut String,
    ) {
        self.dump_node(indentation, self.children.is_empty(), format_date, out);
        for child in &self.children {
            out.push_str(&format!(
                "{}Child node '{}{}':\n",
                indent(indentation),
                path,
                child.name
            ));
            let child_path = format!("{}{}/", path, child.name);
            child
                .info
                .dump_human(indentation + 1, &child_path, format_date, out);
        }
    }

    /// qemu's `bdrv_node_info_dump`.
    fn dump_node(
        &self,
        indentation: usize,
        protocol: bool,
        format_date: &dyn Fn(i64) -> String,
        out: &mut String,
    ) {
        let ind = indent(indentation);
        let disk_size = self
            .actual_size
            .map(size_to_str)
            .unwrap_or_else(|| "unavailable".to_owned());
        let (name_label, format_label, size_label) = if protocol {
            ("filename", "protocol type", "file length")
        } else {
            ("image", "file format", "virtual size")
        };
        out.push_str(&format!("{ind}{name_label}: {}\n", self.filename));
        out.push_str(&format!("{ind}{format_label}: {}\n", self.format));
        out.push_str(&format!(
            "{ind}{size_label}: {} ({} bytes)\n",
            size_to_str(self.virtual_size),
            self.virtual_size
        ));
        out.push_str(&format!("{ind}disk size: {disk_size}\n"));
        if self.encrypted == Some(true) {
            out.push_str(&format!("{ind}encrypted: yes\n"));
        }
        if let Some(cluster_size) = self.cluster_size {
            out.push_str(&format!("{ind}cluster_size: {cluster_size}\n"));
        }
        if self.dirty_flag == Some(true) {
            out.push_str(&format!("{ind}cleanly shut down: no\n"));
        }
        if let Some(backing) = &self.backing_filename {
            out.push_str(&format!("{ind}backing file: {backing}"));
            match &self.full_backing_filename {
                None => out.push_str(" (cannot determine actual path)"),
                Some(full) if full != backing => {
                    out.push_str(&format!(" (actual path: {full})"));
                }
                Some(_) => {}
            }
            out.push('\n');
            if let Some(format) = &self.backing_filename_format {
                out.push_str(&format!("{ind}backing file format: {format}\n"));
            }
        }
        if let Some(snapshots) = self.snapshots.as_ref().filter(|s| !s.is_empty()) {
            out.push_str(&format!("{ind}Snapshot list:\n"));
            out.push_str(&format!("{ind}{}\n", snapshot_table_header()));
            for snapshot in snapshots {
                out.push_str(&format!("{ind}{}\n", snapshot.table_row(format_date)));
            }
        }
        if let Some(specific) = &self.format_specific {
            let data = specific.data();
            if !data.is_empty() {
                out.push_str(&format!("{ind}Format specific information:\n"));
                out.push_str(&dump_human(&QObject::Dict(data), indentation + 1));
            }
        }
    }
}

/// `img info --backing-chain` human output: entries separated by a blank
/// line.
pub fn render_chain_human(chain: &[ImageInfo]) -> String {
    render_chain_human_with(chain, &super::localtime::format_local)
}

/// [`render_chain_human`] with a caller-chosen date formatter.
pub fn render_chain_human_with(chain: &[ImageInfo], format_date: &dyn Fn(i64) -> String) -> String {
    chain
        .iter()
        .map(|info| info.render_human_with(format_date))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `img info --backing-chain --output=json`: a JSON array and a newline.
pub fn render_chain_json(chain: &[ImageInfo]) -> String {
    let list: Vec<QObject> = chain.iter().map(ImageInfo::to_qobject).collect();
    format!("{}\n", to_json_pretty(&QObject::List(list)))
}

impl SnapshotInfo {
    /// The QObject qemu-img serializes.
    pub fn to_qobject(&self) -> QObject {
        let mut dict = QDict::new();
        dict.put("id", self.id.as_str());
        dict.put("name", self.name.as_str());
        dict.put("vm-state-size", self.vm_state_size);
        dict.put("date-sec", self.date_sec);
        dict.put("date-nsec", self.date_nsec);
        dict.put("vm-clock-sec", self.vm_clock_sec);
        dict.put("vm-clock-nsec", self.vm_clock_nsec);
        dict.put_opt("icount", self.icount);
        QObject::Dict(dict)
    }

    /// One row of the snapshot table (qemu's `bdrv_snapshot_dump`), without
    /// indentation or newline.
    pub fn table_row(&self, format_date: &dyn Fn(i64) -> String) -> String {
        let clock_ns =
            i128::from(self.vm_clock_sec) * 1_000_000_000 + i128::from(self.vm_clock_nsec);
        let secs = clock_ns / 1_000_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (clock_ns / 1_000_000) % 1000
        );
        // QEMU's bdrv_snapshot_dump prints "--" for a snapshot without an
        // instruction count, in `info` as in `snapshot -l`.
        let icount = self
            .icount
            .map_or_else(|| "--".to_string(), |n| n.to_string());
        snapshot_columns(
            &self.id,
            &self.name,
            &size_to_str(self.vm_state_size),
            &format_date(self.date_sec),
            &clock,
            &icount,
        )
    }
}

/// The header row of the snapshot table.
pub fn snapshot_table_header() -> String {
    snapshot_columns("ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT")
}

/// `printf("%-7s %-16s %8s %19s %15s %10s")`, padding by bytes as C does.
fn snapshot_columns(
    id: &str,
    tag: &str,
    size: &str,
    date: &str,
    clock: &str,
    icount: &str,
) -> String {
    format!(
        "{} {} {} {} {} {}",
        pad_left_aligned(id, 7),
        pad_left_aligned(tag, 16),
        pad_right_aligned(size, 8),
        pad_right_aligned(date, 19),
        pad_right_aligned(clock, 15),
        pad_right_aligned(icount, 10)
    )
}

fn pad_left_aligned(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(text.len())))
}

fn pad_right_aligned(text: &str, width: usize) -> String {
    format!("{}{text}", " ".repeat(width.saturating_sub(text.len())))
}

fn indent(level: usize) -> String {
    " ".repeat(level * 4)
}

impl FormatSpecific {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Qcow2(_) => "qcow2",
            Self::File(_) => "file",
            Self::Other { type_name, .. } => type_name,
        }
    }

    /// The `data` member.
    pub fn data(&self) -> QDict {
        let mut data = QDict::new();
        match self {
            Self::Qcow2(q) => {
                data.put("compat", q.compat.as_str());
                data.put_opt("data-file", q.data_file.as_deref());
                data.put_opt("data-file-raw", q.data_file_raw);
                data.put_opt("extended-l2", q.extended_l2);
                data.put_opt("lazy-refcounts", q.lazy_refcounts);
                data.put_opt("corrupt", q.corrupt);
                data.put("refcount-bits", q.refcount_bits);
                if let Some(e) = &q.encrypt {
                    data.put("encrypt", QObject::Dict(e.clone()));
                }
                if let Some(bitmaps) = &q.bitmaps {
                    let list: Vec<QObject> = bitmaps
                        .iter()
                        .map(|b| {
                            let mut entry = QDict::new();
                            entry.put("name", b.name.as_str());
                            entry.put("granularity", b.granularity);
                            let flags: Vec<QObject> =
                                b.flags.iter().map(|f| QObject::from(f.as_str())).collect();
                            entry.put("flags", flags);
                            QObject::Dict(entry)
                        })
                        .collect();
                    data.put("bitmaps", list);
                }
                data.put("compression-type", q.compression_type.as_str());
            }
            Self::File(f) => {
                data.put_opt("extent-size-hint", f.extent_size_hint);
            }
            Self::Other { data: other, .. } => data = other.clone(),
        }
        data
    }

    /// The whole `{type, data}` object.
    pub fn to_qobject(&self) -> QObject {
        let mut dict = QDict::new();
        dict.put("type", self.type_name());
        dict.put("data", self.data());
        QObject::Dict(dict)
    }
}

#[cfg(test)]
#[path = "info_tests.rs"]
mod tests;
