//! `img info` of the formats of `qcow::formats`: the cluster size, the
//! format's own section, and a child node per file it uses besides its
//! own (vmdk's `extents.N`, last first, as qemu-img lists them).

use qcow::formats::{ForeignImage, InfoValue};
use qcow::Storage;

use crate::report::info::{ChildInfo, FormatSpecific, ImageInfo};
use crate::report::qobject::{QDict, QObject};

/// Fills what a foreign image adds to `info`.
pub fn describe(info: &mut ImageInfo, image: &dyn ForeignImage) {
    info.cluster_size = image.cluster_size();
    info.dirty_flag = Some(image.is_dirty());
    if let Some(b) = image.backing_file() {
        let dir = std::path::Path::new(&info.filename)
            .parent()
            .unwrap_or(std::path::Path::new(""));
        info.full_backing_filename = Some(qcow::fs::resolve(dir, &b.name).display().to_string());
        info.backing_filename = Some(b.name);
        info.backing_filename_format = b.format.map(str::to_string);
    }
    if let Some(InfoValue::Dict(members)) = image.format_specific() {
        info.format_specific = Some(FormatSpecific::Other {
            type_name: image.format_name(),
            data: dict(members),
        });
    }
    for (name, filename, storage) in image.side_files().into_iter().rev() {
        let len = storage.len().unwrap_or(0);
        info.children.push(ChildInfo {
            name,
            info: ImageInfo::file_node(
                &filename,
                len.div_ceil(512) * 512,
                storage.allocated_bytes(),
            ),
        });
    }
}

fn dict(members: Vec<(&'static str, InfoValue)>) -> QDict {
    let mut d = QDict::new();
    for (key, value) in members {
        d.put(key, object(value));
    }
    d
}

fn object(value: InfoValue) -> QObject {
    match value {
        InfoValue::UInt(n) => QObject::Int(n as i64),
        InfoValue::Str(s) => QObject::Str(s),
        InfoValue::Bool(b) => QObject::Bool(b),
        InfoValue::List(items) => QObject::List(items.into_iter().map(object).collect()),
        InfoValue::Dict(members) => QObject::Dict(dict(members)),
    }
}
