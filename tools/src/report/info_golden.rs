//! Output of qemu-img 10.0.2 `info` captured on real images, for the
//! golden tests of `report::info`.

pub(super) const BASE_HUMAN: &str = r#"image: base.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 1.25 MiB
cluster_size: 65536
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: base.qcow2
    protocol type: file
    file length: 1.31 MiB (1376256 bytes)
    disk size: 1.25 MiB
"#;

pub(super) const BASE_JSON: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 1376256,
                "filename": "base.qcow2",
                "format": "file",
                "actual-size": 1314816,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "virtual-size": 1073741824,
    "filename": "base.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 1314816,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
"#;

pub(super) const TOP_REL_HUMAN: &str = r#"image: q/top.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 324 KiB
cluster_size: 65536
backing file: base.qcow2 (actual path: q/base.qcow2)
backing file format: qcow2
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: q/top.qcow2
    protocol type: file
    file length: 384 KiB (393216 bytes)
    disk size: 324 KiB
"#;

pub(super) const CHAIN_HUMAN: &str = r#"image: top.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 324 KiB
cluster_size: 65536
backing file: base.qcow2
backing file format: qcow2
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: top.qcow2
    protocol type: file
    file length: 384 KiB (393216 bytes)
    disk size: 324 KiB

image: base.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 1.25 MiB
cluster_size: 65536
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: base.qcow2
    protocol type: file
    file length: 1.31 MiB (1376256 bytes)
    disk size: 1.25 MiB
"#;

pub(super) const CHAIN_JSON: &str = r#"[
    {
        "children": [
            {
                "name": "file",
                "info": {
                    "children": [
                    ],
                    "virtual-size": 393216,
                    "filename": "top.qcow2",
                    "format": "file",
                    "actual-size": 331776,
                    "format-specific": {
                        "type": "file",
                        "data": {
                        }
                    },
                    "dirty-flag": false
                }
            }
        ],
        "backing-filename-format": "qcow2",
        "virtual-size": 1073741824,
        "filename": "top.qcow2",
        "cluster-size": 65536,
        "format": "qcow2",
        "actual-size": 331776,
        "format-specific": {
            "type": "qcow2",
            "data": {
                "compat": "1.1",
                "compression-type": "zlib",
                "lazy-refcounts": false,
                "refcount-bits": 16,
                "corrupt": false,
                "extended-l2": false
            }
        },
        "full-backing-filename": "base.qcow2",
        "backing-filename": "base.qcow2",
        "dirty-flag": false
    },
    {
        "children": [
            {
                "name": "file",
                "info": {
                    "children": [
                    ],
                    "virtual-size": 1376256,
                    "filename": "base.qcow2",
                    "format": "file",
                    "actual-size": 1314816,
                    "format-specific": {
                        "type": "file",
                        "data": {
                        }
                    },
                    "dirty-flag": false
                }
            }
        ],
        "virtual-size": 1073741824,
        "filename": "base.qcow2",
        "cluster-size": 65536,
        "format": "qcow2",
        "actual-size": 1314816,
        "format-specific": {
            "type": "qcow2",
            "data": {
                "compat": "1.1",
                "compression-type": "zlib",
                "lazy-refcounts": false,
                "refcount-bits": 16,
                "corrupt": false,
                "extended-l2": false
            }
        },
        "dirty-flag": false
    }
]
"#;

pub(super) const RAW_HUMAN: &str = r#"image: r.img
file format: raw
virtual size: 977 KiB (1000448 bytes)
disk size: 4 KiB
Child node '/file':
    filename: r.img
    protocol type: file
    file length: 977 KiB (1000448 bytes)
    disk size: 4 KiB
"#;

pub(super) const RAW_JSON: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 1000448,
                "filename": "r.img",
                "format": "file",
                "actual-size": 4096,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "virtual-size": 1000448,
    "filename": "r.img",
    "format": "raw",
    "actual-size": 4096,
    "dirty-flag": false
}
"#;

pub(super) const SNAP_HUMAN: &str = r#"image: snap.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 1.28 MiB
cluster_size: 65536
Snapshot list:
ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT
1       s1                    0 B 2026-11-23 05:49:16  0000:00:00.000          0
2       second snapshot with long name      0 B 2026-11-23 05:49:16  0000:00:00.000          0
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: snap.qcow2
    protocol type: file
    file length: 1.63 MiB (1704448 bytes)
    disk size: 1.28 MiB
"#;

pub(super) const SNAP_JSON: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 1704448,
                "filename": "snap.qcow2",
                "format": "file",
                "actual-size": 1339392,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "snapshots": [
        {
            "icount": 0,
            "vm-clock-nsec": 0,
            "name": "s1",
            "date-sec": 1795412956,
            "date-nsec": 846135000,
            "vm-clock-sec": 0,
            "id": "1",
            "vm-state-size": 0
        },
        {
            "icount": 0,
            "vm-clock-nsec": 0,
            "name": "second snapshot with long name",
            "date-sec": 1795412956,
            "date-nsec": 869508000,
            "vm-clock-sec": 0,
            "id": "2",
            "vm-state-size": 0
        }
    ],
    "virtual-size": 1073741824,
    "filename": "snap.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 1339392,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
"#;

pub(super) const EXT_HUMAN: &str = r#"image: ext.qcow2
file format: qcow2
virtual size: 64 MiB (67108864 bytes)
disk size: 260 KiB
cluster_size: 65536
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    refcount bits: 16
    data file: data.raw
    data file raw: true
    corrupt: false
    extended l2: false
Child node '/file':
    filename: ext.qcow2
    protocol type: file
    file length: 320 KiB (327680 bytes)
    disk size: 260 KiB
"#;

pub(super) const EXT_JSON: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 327680,
                "filename": "ext.qcow2",
                "format": "file",
                "actual-size": 266240,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "virtual-size": 67108864,
    "filename": "ext.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 266240,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "data-file": "data.raw",
            "data-file-raw": true,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
"#;

pub(super) const OLD_HUMAN: &str = r#"image: old.qcow2
file format: qcow2
virtual size: 64 MiB (67108864 bytes)
disk size: 196 KiB
cluster_size: 65536
Format specific information:
    compat: 0.10
    compression type: zlib
    refcount bits: 16
Child node '/file':
    filename: old.qcow2
    protocol type: file
    file length: 192 KiB (197120 bytes)
    disk size: 196 KiB
"#;

pub(super) const DIRTY_HUMAN: &str = r#"image: dirty.qcow2
file format: qcow2
virtual size: 64 MiB (67108864 bytes)
disk size: 196 KiB
cluster_size: 65536
cleanly shut down: no
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: true
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: dirty.qcow2
    protocol type: file
    file length: 192 KiB (197120 bytes)
    disk size: 196 KiB
"#;

pub(super) const BM_HUMAN: &str = r#"image: bm.qcow2
file format: qcow2
virtual size: 1 GiB (1073741824 bytes)
disk size: 224 KiB
cluster_size: 65536
Format specific information:
    compat: 1.1
    compression type: zlib
    lazy refcounts: false
    bitmaps:
        [0]:
            flags:
                [0]: auto
            name: b0
            granularity: 65536
        [1]:
            flags:
            name: bitmap1
            granularity: 131072
    refcount bits: 16
    corrupt: false
    extended l2: false
Child node '/file':
    filename: bm.qcow2
    protocol type: file
    file length: 576 KiB (590336 bytes)
    disk size: 224 KiB
"#;

pub(super) const BM_JSON: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 590336,
                "filename": "bm.qcow2",
                "format": "file",
                "actual-size": 229376,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "virtual-size": 1073741824,
    "filename": "bm.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 229376,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "bitmaps": [
                {
                    "flags": [
                        "auto"
                    ],
                    "name": "b0",
                    "granularity": 65536
                },
                {
                    "flags": [
                    ],
                    "name": "bitmap1",
                    "granularity": 131072
                }
            ],
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}
"#;
