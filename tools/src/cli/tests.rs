//! Tests of the command line: option spellings, positionals, and the
//! qemu-img messages for mistakes (captured from qemu-img 10.0.2, with
//! `qemu-img` replaced by `img`).

use super::*;
use crate::opts::Preallocation;
use crate::size::ResizeSize;

fn parse(args: &[&str]) -> Command {
    let mut full = vec!["img"];
    full.extend_from_slice(args);
    match parse_args(full) {
        Ok(cli) => cli.command,
        Err(err) => panic!("{args:?} failed: {}", err.message),
    }
}

fn error(args: &[&str]) -> CliError {
    let mut full = vec!["img"];
    full.extend_from_slice(args);
    parse_args(full).expect_err("command line should be rejected")
}

#[test]
fn create() {
    let Command::Create(a) = parse(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-o",
        "refcount_bits=8",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "-u",
        "-q",
        "x.qcow2",
        "1.5G",
    ]) else {
        panic!("not create")
    };
    assert_eq!(a.format, "qcow2");
    assert_eq!(a.options, vec!["cluster_size=4k", "refcount_bits=8"]);
    assert_eq!(
        a.option_list().unwrap().as_str(),
        "cluster_size=4k,refcount_bits=8"
    );
    assert_eq!(a.backing.as_deref(), Some("base.qcow2"));
    assert_eq!(a.backing_format.as_deref(), Some("qcow2"));
    assert!(a.backing_unsafe && a.quiet);
    assert_eq!(a.filename.as_deref(), Some("x.qcow2"));
    assert_eq!(a.size, Some(1610612736));

    let Command::Create(a) = parse(&["create", "x.raw", "1M", "--format=qcow2"]) else {
        panic!("not create")
    };
    assert_eq!(a.format, "qcow2");
    let Command::Create(a) = parse(&["create", "x.raw", "1M"]) else {
        panic!("not create")
    };
    assert_eq!(a.format, "raw");
    // `-o help` needs no file name.
    let Command::Create(a) = parse(&["create", "-f", "qcow2", "-o", "help"]) else {
        panic!("not create")
    };
    assert_eq!(a.filename, None);
    assert!(a.option_list().unwrap().has_help());
}

#[test]
fn info_check_map() {
    let Command::Info(a) = parse(&["info", "--output=json", "--backing-chain", "-U", "x"]) else {
        panic!("not info")
    };
    assert_eq!(a.output, OutputFormat::Json);
    assert!(a.backing_chain && a.force_share);
    let Command::Info(a) = parse(&["info", "-b", "--output", "human", "-f", "raw", "x"]) else {
        panic!("not info")
    };
    assert!(a.backing_chain);
    assert_eq!(a.format.as_deref(), Some("raw"));
    let Command::Check(a) = parse(&["check", "-r", "leaks", "-q", "--output=json", "x"]) else {
        panic!("not check")
    };
    assert_eq!(a.repair, Some(RepairMode::Leaks));
    assert_eq!(a.output, OutputFormat::Json);
    let Command::Check(a) = parse(&["check", "--repair=all", "x"]) else {
        panic!("not check")
    };
    assert_eq!(a.repair, Some(RepairMode::All));
    let Command::Map(a) = parse(&[
        "map",
        "--output=json",
        "--start-offset",
        "1M",
        "--max-length=4k",
        "x",
    ]) else {
        panic!("not map")
    };
    assert_eq!((a.start_offset, a.max_length), (1 << 20, Some(4096)));
    let Command::Map(a) = parse(&["map", "x"]) else {
        panic!("not map")
    };
    assert_eq!(
        (a.start_offset, a.max_length, a.output),
        (0, None, OutputFormat::Human)
    );
}

#[test]
fn convert() {
    let Command::Convert(a) = parse(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        "-o",
        "compat=0.10",
        "-c",
        "-p",
        "-S",
        "8k",
        "-B",
        "b",
        "-F",
        "raw",
        "-n",
        "-m",
        "16",
        "-W",
        "-t",
        "none",
        "-T",
        "writeback",
        "-l",
        "snapshot.name=s1",
        "a",
        "b",
        "out",
    ]) else {
        panic!("not convert")
    };
    assert_eq!(a.source_format.as_deref(), Some("qcow2"));
    assert_eq!(a.target_format, "qcow2");
    assert!(a.compress && a.progress && a.no_create && a.oob_writes);
    assert_eq!(a.sparse_size, Some(8192));
    assert_eq!(a.parallel, Some(16));
    assert_eq!(a.target_cache, Some(CacheMode::None));
    assert_eq!(a.source_cache, Some(CacheMode::Writeback));
    assert_eq!(
        a.snapshot_param(),
        Some(SnapshotParam::Spec {
            id: None,
            name: Some("s1".to_owned())
        })
    );
    assert_eq!(a.sources(), ["a".to_owned(), "b".to_owned()]);
    assert_eq!(a.target(), Some("out"));
    let Command::Convert(a) = parse(&["convert", "-s", "snap", "a", "b"]) else {
        panic!("not convert")
    };
    assert_eq!(a.target_format, "raw");
    assert_eq!(
        a.snapshot_param(),
        Some(SnapshotParam::IdOrName("snap".to_owned()))
    );
    // `-o help` needs no file names.
    parse(&["convert", "-O", "qcow2", "-o", "help"]);
}

fn convert_args(args: &[&str]) -> ConvertArgs {
    let mut full = vec!["convert"];
    full.extend_from_slice(args);
    match parse(&full) {
        Command::Convert(a) => a,
        other => panic!("not convert: {other:?}"),
    }
}

#[test]
fn convert_help_names_the_target_only_after_a_source() {
    assert_eq!(convert_args(&["-o", "help"]).help_target(), None);
    assert_eq!(convert_args(&["-o", "help", "only"]).help_target(), None);
    assert_eq!(
        convert_args(&["-o", "help", "a", "b"]).help_target(),
        Some("b")
    );
}

#[test]
fn convert_copy_offload_conflicts_in_qemu_img_order() {
    let conflict = |args: &[&str]| convert_args(args).copy_offload_conflict();
    assert_eq!(conflict(&["-C", "a", "b"]), None);
    assert_eq!(conflict(&["-c", "-S", "4k", "a", "b"]), None);
    assert_eq!(
        conflict(&["-C", "-c", "-S", "4k", "--salvage", "a", "b"]),
        Some("Cannot enable copy offloading when -c is used")
    );
    assert_eq!(
        conflict(&["-C", "-S", "0", "--salvage", "a", "b"]),
        Some("Cannot enable copy offloading when -S is used")
    );
    assert_eq!(
        conflict(&["--salvage", "-C", "a", "b"]),
        Some("Cannot use copy offloading in salvaging mode")
    );
    let no_create = |args: &[&str]| convert_args(args).no_create_conflict();
    assert_eq!(
        no_create(&["-n", "-o", "cluster_size=4k", "a", "b"]),
        Some("-o has no effect when skipping image creation")
    );
    assert_eq!(
        no_create(&["--target-is-zero", "a", "b"]),
        Some("--target-is-zero requires use of -n flag")
    );
    assert_eq!(no_create(&["-n", "--target-is-zero", "a", "b"]), None);
}

#[test]
fn resize_accepts_negative_sizes() {
    let cases: [(&[&str], ResizeSize); 5] = [
        (&["resize", "x", "-1G"], ResizeSize::Shrink(1 << 30)),
        (
            &["resize", "--shrink", "x", "-1G"],
            ResizeSize::Shrink(1 << 30),
        ),
        (&["resize", "x", "--", "-1G"], ResizeSize::Shrink(1 << 30)),
        (&["resize", "-q", "x", "+512M"], ResizeSize::Grow(512 << 20)),
        (
            &["resize", "-f", "qcow2", "x", "2G"],
            ResizeSize::Absolute(2 << 30),
        ),
    ];
    for (args, size) in cases {
        let Command::Resize(a) = parse(args) else {
            panic!("not resize")
        };
        assert_eq!(a.size, size, "{args:?}");
        assert_eq!(a.filename, "x");
    }
    let Command::Resize(a) = parse(&["resize", "--preallocation=falloc", "x", "+1G"]) else {
        panic!("not resize")
    };
    assert_eq!(a.preallocation, Some(Preallocation::Falloc));
}

#[test]
fn compare() {
    let Command::Compare(a) = parse(&[
        "compare", "-f", "raw", "-F", "qcow2", "-s", "-q", "-p", "a", "b",
    ]) else {
        panic!("not compare")
    };
    assert_eq!(a.a_format.as_deref(), Some("raw"));
    assert_eq!(a.b_format.as_deref(), Some("qcow2"));
    assert!(a.strict && a.quiet && a.progress);
    assert_eq!((a.filename1.as_str(), a.filename2.as_str()), ("a", "b"));
}

#[test]
fn help_and_version() {
    for args in [
        &["--help"][..],
        &["help", "info"],
        &["info", "--help"],
        &["resize", "-h"],
        &["help"],
        &["--version"],
    ] {
        let err = error(args);
        assert_eq!(err.exit_code, 0, "{args:?}");
        assert!(err.to_stdout);
        assert!(!err.message.is_empty());
    }
    assert!(error(&["info", "--help"])
        .message
        .contains("--backing-chain"));
}

#[test]
fn usage_errors_match_qemu_img() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[],
            "img: Not enough arguments\nTry 'img --help' for more info\n",
        ),
        (
            &["foo"],
            "img: Command not found: foo\nTry 'img --help' for more info\n",
        ),
        (
            &["check", "-r", "foo", "x"],
            "img: --repair (-r) expects 'leaks' or 'all' not 'foo'\n\
             Try 'img check --help' for more info\n",
        ),
        (
            &["check", "--output=xml", "x"],
            "img: --output expects 'human' or 'json' not 'xml'\n\
             Try 'img check --help' for more info\n",
        ),
        (
            &["info"],
            "img: Expecting one image file name\nTry 'img info --help' for more info\n",
        ),
        (
            &["info", "a", "b"],
            "img: Expecting one image file name\nTry 'img info --help' for more info\n",
        ),
        (
            &["check"],
            "img: Expecting one image file name\nTry 'img check --help' for more info\n",
        ),
        (
            &["map", "a", "b"],
            "img: Expecting one image file name\nTry 'img map --help' for more info\n",
        ),
        (
            &["create"],
            "img: Expecting image file name\nTry 'img create --help' for more info\n",
        ),
        (
            &["create", "-f", "qcow2", "x", "1G", "extra"],
            "img: Unexpected argument: extra\nTry 'img create --help' for more info\n",
        ),
        (
            &["create", "-f", "raw", "x", "12Q"],
            "img: Invalid image size specified: '12Q'.\n",
        ),
        (&["convert"], "img: Must specify image file name\n"),
        (&["convert", "a"], "img: Must specify image file name\n"),
        (
            &["compare", "a"],
            "img: Expecting two image file names\nTry 'img compare --help' for more info\n",
        ),
        (
            &["compare", "a", "b", "c"],
            "img: Expecting two image file names\nTry 'img compare --help' for more info\n",
        ),
        (
            &["resize", "a"],
            "img: Expecting image file name and size\nTry 'img resize --help' for more info\n",
        ),
        (
            &["resize", "a", "b", "c"],
            "img: Extra argument(s) in command line\nTry 'img resize --help' for more info\n",
        ),
        (
            &["info", "--output"],
            "img info: option '--output' requires an argument\n\
             Try 'img info --help' for more info\n",
        ),
        (
            &["create", "-o"],
            "img create: option requires an argument -- 'o'\n\
             Try 'img create --help' for more info\n",
        ),
        (
            &["check", "-r"],
            "img check: option requires an argument -- 'r'\n\
             Try 'img check --help' for more info\n",
        ),
        (
            &["info", "-x", "a"],
            "img info: invalid option -- 'x'\nTry 'img info --help' for more info\n",
        ),
        (
            &["info", "--foo", "x"],
            "img info: unrecognized option '--foo'\nTry 'img info --help' for more info\n",
        ),
        (
            &["convert", "-m", "0", "a", "b"],
            "img: Invalid number of coroutines specified. Must be between 1 and 16.\n",
        ),
        (
            &["convert", "-t", "foo", "a", "b"],
            "img: Invalid cache option: foo\n",
        ),
        (
            &["convert", "-l", "snapshot.foo=1", "a", "b"],
            "img: Invalid parameter 'snapshot.foo'\n\
             img: Failed in parsing snapshot param 'snapshot.foo=1'\n",
        ),
        (
            &["create", "-o", "", "x", "1M"],
            "img: Invalid option list: \n",
        ),
        (
            &["create", "-o", "a=1,", "x", "1M"],
            "img: Invalid option list: a=1,\n",
        ),
        (
            &["resize", "--preallocation=foo", "x", "3G"],
            "img: Invalid preallocation mode 'foo'\n",
        ),
        (
            &["resize", "x", "+x"],
            "img: Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively.\n",
        ),
        (
            &["map", "--start-offset", "-1", "x"],
            "img: Invalid start offset specified. Must be between 0 and 9223372036854775807.\n",
        ),
    ];
    for (args, message) in cases {
        let err = error(args);
        assert_eq!(err.message, *message, "{args:?}");
        assert_eq!(err.exit_code, 1, "{args:?}");
        assert!(!err.to_stdout);
    }
}
