//! Golden tests for `report::check`: expected texts were printed by
//! qemu-img 10.0.2 `check` on qcow2 images whose refcount blocks were
//! patched to create leaks (refcount 1 on unused clusters past the data)
//! and corruptions (refcount 0 on used data clusters).

use super::*;

fn report(name: &str) -> CheckReport {
    CheckReport {
        filename: name.to_owned(),
        format: "qcow2".to_owned(),
        image_end_offset: 1376256,
        total_clusters: 16384,
        allocated_clusters: 16,
        ..CheckReport::default()
    }
}

#[test]
fn clean_image() {
    let clean = report("base.qcow2");
    assert_eq!(
        clean.render_human(),
        "No errors were found on the image.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1376256\n"
    );
    assert_eq!(
        clean.render_json(),
        r#"{
    "image-end-offset": 1376256,
    "total-clusters": 16384,
    "check-errors": 0,
    "allocated-clusters": 16,
    "filename": "base.qcow2",
    "format": "qcow2"
}
"#
    );
    assert_eq!(clean.exit_code(), 0);
    assert_eq!(clean.failure_message(), None);
}

#[test]
fn leaks() {
    let leaky = CheckReport {
        leaks: 2,
        image_end_offset: 1507328,
        ..report("leak.qcow2")
    };
    assert_eq!(
        leaky.render_human(),
        "\n2 leaked clusters were found on the image.\n\
         This means waste of disk space, but no harm to data.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1507328\n"
    );
    assert_eq!(
        leaky.render_json(),
        r#"{
    "image-end-offset": 1507328,
    "total-clusters": 16384,
    "check-errors": 0,
    "leaks": 2,
    "allocated-clusters": 16,
    "filename": "leak.qcow2",
    "format": "qcow2"
}
"#
    );
    assert_eq!(leaky.exit_code(), 3);
    let messages = [
        CheckMessage::RefcountMismatch {
            cluster: 21,
            refcount: 1,
            reference: 0,
            repairing: false,
        },
        CheckMessage::RefcountMismatch {
            cluster: 22,
            refcount: 1,
            reference: 0,
            repairing: false,
        },
    ];
    assert_eq!(
        render_messages(&messages),
        "Leaked cluster 21 refcount=1 reference=0\nLeaked cluster 22 refcount=1 reference=0\n"
    );
}

#[test]
fn corruptions() {
    let corrupt = CheckReport {
        corruptions: 4,
        ..report("c.qcow2")
    };
    assert_eq!(
        corrupt.render_human(),
        "\n4 errors were found on the image.\n\
         Data may be corrupted, or further writes to the image may corrupt it.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1376256\n"
    );
    assert_eq!(
        corrupt.render_json(),
        r#"{
    "image-end-offset": 1376256,
    "total-clusters": 16384,
    "corruptions": 4,
    "check-errors": 0,
    "allocated-clusters": 16,
    "filename": "c.qcow2",
    "format": "qcow2"
}
"#
    );
    assert_eq!(corrupt.exit_code(), 2);
    let messages = [
        CheckMessage::RefcountMismatch {
            cluster: 6,
            refcount: 0,
            reference: 1,
            repairing: false,
        },
        CheckMessage::oflag_copied_data(0x8000000000060000, 0),
    ];
    assert_eq!(
        render_messages(&messages),
        "ERROR cluster 6 refcount=0 reference=1\n\
         ERROR OFLAG_COPIED data cluster: l2_entry=8000000000060000 refcount=0\n"
    );
}

#[test]
fn corruptions_and_leaks() {
    let both = CheckReport {
        corruptions: 2,
        leaks: 1,
        image_end_offset: 1441792,
        ..report("both.qcow2")
    };
    assert_eq!(
        both.render_human(),
        "\n2 errors were found on the image.\n\
         Data may be corrupted, or further writes to the image may corrupt it.\n\
         \n1 leaked clusters were found on the image.\n\
         This means waste of disk space, but no harm to data.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1441792\n"
    );
    assert_eq!(
        both.render_json(),
        r#"{
    "image-end-offset": 1441792,
    "total-clusters": 16384,
    "corruptions": 2,
    "check-errors": 0,
    "leaks": 1,
    "allocated-clusters": 16,
    "filename": "both.qcow2",
    "format": "qcow2"
}
"#
    );
    assert_eq!(both.exit_code(), 2);
}

#[test]
fn repaired_leaks() {
    let repaired = CheckReport {
        leaks_fixed: 2,
        ..report("leak2.qcow2")
    };
    assert_eq!(
        repaired.render_human(),
        "The following inconsistencies were found and repaired:\n\
         \n    2 leaked clusters\n    0 corruptions\n\n\
         Double checking the fixed image now...\n\
         No errors were found on the image.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1376256\n"
    );
    assert_eq!(
        repaired.render_json(),
        r#"{
    "image-end-offset": 1376256,
    "total-clusters": 16384,
    "check-errors": 0,
    "leaks-fixed": 2,
    "allocated-clusters": 16,
    "filename": "leak2.qcow2",
    "format": "qcow2"
}
"#
    );
    assert_eq!(repaired.exit_code(), 0);
    let line = CheckMessage::RefcountMismatch {
        cluster: 21,
        refcount: 1,
        reference: 0,
        repairing: true,
    }
    .line();
    assert_eq!(line, "Repairing cluster 21 refcount=1 reference=0");
}

#[test]
fn repaired_corruptions() {
    let repaired = CheckReport {
        corruptions_fixed: 2,
        image_end_offset: 1507328,
        ..report("c3.qcow2")
    };
    assert_eq!(
        repaired.render_human(),
        "The following inconsistencies were found and repaired:\n\
         \n    0 leaked clusters\n    2 corruptions\n\n\
         Double checking the fixed image now...\n\
         No errors were found on the image.\n\
         16/16384 = 0.10% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
         Image end offset: 1507328\n"
    );
    assert_eq!(
        repaired.render_json(),
        r#"{
    "image-end-offset": 1507328,
    "total-clusters": 16384,
    "corruptions-fixed": 2,
    "check-errors": 0,
    "allocated-clusters": 16,
    "filename": "c3.qcow2",
    "format": "qcow2"
}
"#
    );
}

#[test]
fn fragmented_and_compressed() {
    let compressed = CheckReport {
        fragmented_clusters: 16,
        compressed_clusters: 16,
        image_end_offset: 393216,
        ..report("comp.qcow2")
    };
    assert_eq!(
        compressed.render_human(),
        "No errors were found on the image.\n\
         16/16384 = 0.10% allocated, 100.00% fragmented, 100.00% compressed clusters\n\
         Image end offset: 393216\n"
    );
    assert_eq!(
        compressed.render_json(),
        r#"{
    "image-end-offset": 393216,
    "compressed-clusters": 16,
    "total-clusters": 16384,
    "check-errors": 0,
    "allocated-clusters": 16,
    "filename": "comp.qcow2",
    "format": "qcow2",
    "fragmented-clusters": 16
}
"#
    );
    let fragmented = CheckReport {
        total_clusters: 16,
        allocated_clusters: 3,
        fragmented_clusters: 2,
        image_end_offset: 524288,
        ..report("fr.qcow2")
    };
    assert_eq!(
        fragmented.render_human(),
        "No errors were found on the image.\n\
         3/16 = 18.75% allocated, 66.67% fragmented, 0.00% compressed clusters\n\
         Image end offset: 524288\n"
    );
}

#[test]
fn internal_errors() {
    let failed = CheckReport {
        check_errors: 1,
        total_clusters: 0,
        allocated_clusters: 0,
        image_end_offset: 0,
        ..report("x.qcow2")
    };
    assert_eq!(
        failed.render_human(),
        "\n1 internal errors have occurred during the check.\n"
    );
    assert_eq!(failed.exit_code(), 1);
    assert_eq!(failed.failure_message(), Some("Check failed"));
}
