//! The LUKS ciphers, modes, IV generators and hashes beyond
//! aes-xts-plain64, against QEMU both ways; `img convert` into encrypted
//! targets (qcow2 with LUKS, and the luks format) compared with the source
//! by qemu-img; and a LUKS2 header refused in qemu-img's words.

use std::path::Path;

use integration_tests::encrypted::{
    luks_qcow2_opts, open_luks_qcow2, qemu_io_with_secret, read_image, SECRET,
};
use integration_tests::{img, ok, qemu_img, require_qemu, run};

/// Which tool writes an image's LUKS header.
#[derive(Clone, Copy, Debug)]
enum Creator {
    Img,
    QemuImg,
}

/// The default run: every cipher family (aes, serpent, twofish, cast5),
/// mode (xts, ecb, ctr here, cbc in the convert test), IV generator
/// (plain64, essiv, plain) and hash (sha512, sha1, sha224, ripemd160 as
/// hash-alg; md5 and sha256 as ivgen-hash-alg; sha384 in the convert test)
/// at least once, one image per combination, headers written by both
/// tools in turn. Each create spends about a second measuring PBKDF2, as
/// qemu-img's does, so the combinations are kept few; `LUKS_FULL_MATRIX=1`
/// runs [`FULL_MATRIX`] with both creators. 192-bit keys stay in XTS:
/// QEMU 10 asserts on key material of a non-whole number of sectors
/// (24 bytes x 4000 stripes), which other modes give them.
const DEFAULT_MATRIX: &[(&str, Creator)] = &[
    ("cipher-alg=serpent-192,hash-alg=sha512", Creator::Img),
    (
        "cipher-alg=twofish-256,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1",
        Creator::QemuImg,
    ),
    (
        "cipher-alg=cast5-128,cipher-mode=ctr,ivgen-alg=essiv,ivgen-hash-alg=md5,hash-alg=sha224",
        Creator::Img,
    ),
    (
        "cipher-alg=aes-128,cipher-mode=ecb,ivgen-alg=plain,hash-alg=ripemd160",
        Creator::QemuImg,
    ),
];

/// The long run (`LUKS_FULL_MATRIX=1`): these and [`DEFAULT_MATRIX`], each
/// created by both tools.
const FULL_MATRIX: &[&str] = &[
    "cipher-alg=serpent-256,hash-alg=sha512",
    "cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1",
    "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain,hash-alg=md5",
    "cipher-alg=aes-128,cipher-mode=ctr,hash-alg=ripemd160",
    "cipher-alg=twofish-256,cipher-mode=ecb,ivgen-alg=plain,hash-alg=sha384",
    "cipher-alg=serpent-192,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    "cipher-alg=aes-192,hash-alg=sha1",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha224",
    "cipher-alg=serpent-128,cipher-mode=ctr,ivgen-alg=plain,hash-alg=sha384",
    "cipher-alg=twofish-192,hash-alg=ripemd160",
    "cipher-alg=cast5-128,cipher-mode=ecb,hash-alg=sha512",
];

/// qcow2 `-o` for LUKS with `options` under `encrypt.`.
fn qcow2_luks_options(options: &str) -> String {
    let mut o = String::from("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10");
    for kv in options.split(',') {
        o.push_str(",encrypt.");
        o.push_str(kv);
    }
    o
}

/// `creator` makes a LUKS qcow2 with `options`; qemu-io writes into it and
/// our library reads that back, then our library writes and qemu-io reads.
fn both_ways(dir: &Path, index: usize, options: &str, creator: Creator) {
    let o = qcow2_luks_options(options);
    let path = dir.join(format!("{creator:?}{index}.qcow2"));
    let p = path.to_str().unwrap();
    let args = [
        "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", &o, p, "1M",
    ];
    ok(&mut match creator {
        Creator::Img => img(&args),
        Creator::QemuImg => qemu_img(&args),
    });
    qemu_io_with_secret(
        &luks_qcow2_opts(&path),
        &["write -P 0x5a 1000 70000", "read -P 0x5a 1000 70000"],
    );
    let back = read_image(&open_luks_qcow2(&path, false), 0, 72000);
    assert!(
        back[..1000].iter().all(|&b| b == 0),
        "{options} {creator:?}"
    );
    assert!(
        back[1000..71000].iter().all(|&b| b == 0x5a),
        "{options} {creator:?}: our library misreads what qemu-io wrote"
    );
    assert!(
        back[71000..].iter().all(|&b| b == 0),
        "{options} {creator:?}"
    );
    let image = open_luks_qcow2(&path, true);
    image.write_at(&[0xa5; 3000], 69_500).unwrap();
    image.flush().unwrap();
    drop(image);
    qemu_io_with_secret(
        &luks_qcow2_opts(&path),
        &["read -P 0x5a 1000 68500", "read -P 0xa5 69500 3000"],
    );
}

/// Runs `cases` side by side (each create is mostly PBKDF2 timing).
fn run_matrix(cases: &[(&str, Creator)]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::thread::scope(|s| {
        for (i, &(options, creator)) in cases.iter().enumerate() {
            let dir = dir.path();
            s.spawn(move || both_ways(dir, i, options, creator));
        }
    });
}

#[test]
fn every_cipher_family_mode_ivgen_and_hash_interoperates_with_qemu() {
    require_qemu!();
    run_matrix(DEFAULT_MATRIX);
}

/// The long matrix: `LUKS_FULL_MATRIX=1 cargo test -p integration-tests
/// --test encryption_ciphers_vs_qemu`.
#[test]
fn full_cipher_matrix_interoperates_with_qemu() {
    require_qemu!();
    if std::env::var_os("LUKS_FULL_MATRIX").is_none() {
        eprintln!("LUKS_FULL_MATRIX not set: the full cipher matrix is skipped");
        return;
    }
    let options = FULL_MATRIX
        .iter()
        .copied()
        .chain(DEFAULT_MATRIX.iter().map(|&(o, _)| o));
    let cases: Vec<(&str, Creator)> = options
        .flat_map(|o| [(o, Creator::Img), (o, Creator::QemuImg)])
        .collect();
    // Four at a time: bounded threads and processes on a shared machine.
    for chunk in cases.chunks(4) {
        run_matrix(chunk);
    }
}

/// A raw source with data, a hole and a zero run.
fn source(dir: &Path) -> String {
    let src = dir.join("src.raw");
    let s = src.to_str().unwrap().to_string();
    ok(&mut qemu_img(&["create", "-q", "-f", "raw", &s, "1M"]));
    integration_tests::qemu_io(
        "raw",
        &src,
        &[
            "write -P 0x33 1000 300000",
            "write -z 512k 64k",
            "write -P 0x44 768k 65536",
        ],
    );
    s
}

fn compare_with_qemu(src: &str, target_opts: &str) {
    let out = ok(&mut qemu_img(&[
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        &format!("driver=raw,file.filename={src}"),
        target_opts,
    ]));
    assert!(out.contains("Images are identical."), "{out}");
}

#[test]
fn convert_writes_encrypted_targets_qemu_reads_back() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = source(dir.path());
    let q = dir.path().join("t.qcow2");
    let qs = q.to_str().unwrap();
    ok(&mut img(&[
        "convert",
        "-O",
        "qcow2",
        "--object",
        SECRET,
        "-o",
        &qcow2_luks_options("cipher-alg=twofish-256,hash-alg=sha384"),
        &src,
        qs,
    ]));
    compare_with_qemu(&src, &luks_qcow2_opts(&q));
    let info = ok(&mut qemu_img(&["info", qs]));
    assert!(info.contains("encrypted: yes"), "{info}");
    assert!(info.contains("cipher alg: twofish-256"), "{info}");
    assert!(info.contains("hash alg: sha384"), "{info}");

    let l = dir.path().join("t.luks");
    let ls = l.to_str().unwrap();
    ok(&mut img(&[
        "convert",
        "-O",
        "luks",
        "--object",
        SECRET,
        "-o",
        "key-secret=sec0,iter-time=10,cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv",
        &src,
        ls,
    ]));
    compare_with_qemu(
        &src,
        &format!("driver=luks,file.filename={ls},key-secret=sec0"),
    );
    // Without a key, `info -f luks` shows the header as qemu-img does.
    for output in ["human", "json"] {
        let args = ["info", "--output", output, "-f", "luks", ls];
        assert_eq!(ok(&mut img(&args)), ok(&mut qemu_img(&args)), "{output}");
    }
    // No plain byte of the source lies in the file.
    let raw = std::fs::read(&l).unwrap();
    assert!(!raw.windows(64).any(|w| w.iter().all(|&b| b == 0x33)));
}

#[test]
fn encrypted_convert_refusals_match_qemu_img() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = source(dir.path());
    for (format, options, compress) in [
        ("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0", true),
        ("qcow2", "encrypt.format=luks", false),
    ] {
        let target = dir.path().join(format!("r.{format}"));
        let t = target.to_str().unwrap();
        let mut args = vec!["convert", "-O", format, "--object", SECRET, "-o", options];
        if compress {
            args.push("-c");
        }
        args.extend([src.as_str(), t]);
        let ours = run(&mut img(&args));
        let _ = std::fs::remove_file(&target);
        let theirs = run(&mut qemu_img(&args));
        let _ = std::fs::remove_file(&target);
        assert!(!ours.status.success() && !theirs.status.success());
        let strip = |b: &[u8], p: &str| {
            String::from_utf8_lossy(b)
                .trim_start_matches(p)
                .trim()
                .to_string()
        };
        assert_eq!(
            strip(&ours.stderr, "img: "),
            strip(&theirs.stderr, "qemu-img: "),
            "{options}"
        );
    }
}

#[test]
fn a_luks2_header_is_refused_in_qemu_imgs_words() {
    require_qemu!();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // QEMU 10 reads only the binary header's version before refusing.
    let v2 = dir.path().join("v2.luks");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..6].copy_from_slice(b"LUKS\xba\xbe");
    bytes[7] = 2;
    std::fs::write(&v2, &bytes).unwrap();
    let p = v2.to_str().unwrap();
    let ours = run(&mut img(&["info", "-f", "luks", p]));
    let theirs = run(&mut qemu_img(&["info", "-f", "luks", p]));
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    assert_eq!(
        text(&ours.stderr).trim_start_matches("img: "),
        text(&theirs.stderr).trim_start_matches("qemu-img: ")
    );
    assert!(text(&ours.stderr).contains("LUKS version 2 is not supported"));
}
