//! `img check`.

use std::path::Path;

use anyhow::{anyhow, Result};
use qcow::check::{check as check_image, Repair};
use qcow::fs::{open_storage, probe, FileOpener, Format};
use qcow::image::{read_header_cluster, Opener};

use super::{io_reason, open_error, parse_format};
use crate::cli::{CheckArgs, RepairMode};
use crate::report::check::CheckReport;
use crate::report::OutputFormat;

fn to_report(filename: &str, r: &qcow::check::CheckReport) -> CheckReport {
    CheckReport {
        filename: filename.to_string(),
        format: "qcow2".to_string(),
        check_errors: r.check_errors,
        image_end_offset: r.image_end_offset,
        corruptions: r.corruptions,
        leaks: r.leaks,
        corruptions_fixed: r.corruptions_fixed,
        leaks_fixed: r.leaks_fixed,
        total_clusters: r.total_clusters,
        allocated_clusters: r.allocated_clusters,
        fragmented_clusters: r.fragmented_clusters,
        compressed_clusters: r.compressed_clusters,
    }
}

/// Prints a check's messages on stderr as qemu-img does: the program name
/// before the ones QEMU reports with error_report.
fn print_messages(messages: &[String]) {
    for m in messages {
        if qcow::check::is_error_report(m) {
            eprintln!("{}: {m}", crate::program());
        } else {
            eprintln!("{m}");
        }
    }
}

/// Runs `img check`.
pub fn run(args: &CheckArgs) -> Result<i32> {
    let spec = super::image_spec::resolve(&args.filename, args.format.as_deref(), args.image_opts)?;
    let filename = &spec.filename;
    let repair = match args.repair {
        None => Repair::None,
        Some(RepairMode::Leaks) => Repair::Leaks,
        Some(RepairMode::All) => Repair::All,
    };
    let storage = open_storage(Path::new(filename), repair != Repair::None)
        .map_err(|e| open_error(filename, e))?;
    let format = match &spec.format {
        Some(f) => parse_format(f)?,
        None => probe(&*storage, Path::new(filename)).map_err(|e| open_error(filename, e))?,
    };
    let how = super::locks::ImageUse::new(repair != Repair::None, args.force_share);
    super::locks::lock_image(Path::new(filename), filename, format, how)?;
    if format == Format::Raw {
        eprintln!(
            "{}: This image format does not support checks",
            crate::program()
        );
        return Ok(crate::report::check::EXIT_NOT_SUPPORTED);
    }
    if format == Format::Luks {
        // QEMU opens the volume (with its key) and has no check for it.
        super::open_named_for(
            &args.filename,
            args.format.as_deref(),
            super::locks::ImageUse::read(args.force_share),
            args.image_opts,
        )?;
        eprintln!(
            "{}: This image format does not support checks",
            crate::program()
        );
        return Ok(crate::report::check::EXIT_NOT_SUPPORTED);
    }
    if format != Format::Qcow2 {
        return super::check_foreign::run(args, format);
    }
    // qemu-img check opens the backing chain first and fails when it
    // cannot (a missing file, a cycle, too deep); so do we. A header that
    // does not parse is left to the check, which reports it.
    if let Ok(hc) = read_header_cluster(&*storage) {
        if hc.header.crypt_method != 0 {
            // QEMU opens an encrypted image's cipher (and so needs its
            // key) before it checks.
            super::open_named_for(
                &args.filename,
                args.format.as_deref(),
                super::locks::ImageUse::read(args.force_share),
                args.image_opts,
            )?;
        }
        if let Some(name) = &hc.backing_file {
            let opener = FileOpener::for_image(Path::new(filename));
            opener
                .open_backing(name, hc.backing_format())
                .map_err(|e| anyhow!("Could not open '{filename}': {}", io_reason(&e)))?;
            super::locks::lock_backing_files(filename, &opener.opened_backing_files(), how)?;
        }
    }
    let first = check_image(&*storage, None, repair)
        .map_err(|e| anyhow!("Could not open '{filename}': {}", io_reason(&e)))?;
    print_messages(&first.messages);
    if let Some(reason) = &first.aborted {
        eprintln!("{}: Check failed: {reason}", crate::program());
        return Ok(1);
    }
    let mut report = to_report(filename, &first);
    if repair != Repair::None && (first.corruptions_fixed > 0 || first.leaks_fixed > 0) {
        if first.image_unusable {
            // The repair marked the image corrupt, which leaves QEMU's
            // open image without a driver: its double check fails.
            if !args.quiet && args.output == OutputFormat::Human {
                print!("{}", report.render_repaired_preamble());
            }
            eprintln!("{}: Check failed: No medium found", crate::program());
            return Ok(1);
        }
        // Double check the repaired image, as qemu-img does.
        let second = check_image(&*storage, None, Repair::None)?;
        print_messages(&second.messages);
        let mut again = to_report(filename, &second);
        again.corruptions_fixed = first.corruptions_fixed;
        again.leaks_fixed = first.leaks_fixed;
        report = again;
    }
    if !args.quiet || args.output == OutputFormat::Json {
        let text = match args.output {
            OutputFormat::Human => report.render_human(),
            OutputFormat::Json => report.render_json(),
        };
        print!("{text}");
    }
    if let Some(msg) = report.failure_message() {
        eprintln!("{}: {msg}", crate::program());
    }
    Ok(report.exit_code())
}
