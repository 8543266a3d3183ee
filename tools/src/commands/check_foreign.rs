//! `img check` of the formats of `qcow::formats` (vdi has a check; vpc
//! has none, as in qemu-img).

use anyhow::{anyhow, Result};
use qcow::fs::{open_image, AnyImage, Format};

use super::io_reason;
use crate::cli::CheckArgs;
use crate::report::check::{CheckReport, EXIT_NOT_SUPPORTED, NOT_SUPPORTED_MESSAGE};
use crate::report::OutputFormat;

/// Checks `args.filename` as an image of `format` (neither qcow2 nor raw).
pub fn run(args: &CheckArgs, format: Format) -> Result<i32> {
    let filename = &args.filename;
    // vhdx's check repairs by opening the image for writing, which
    // replays its log (qemu's `vhdx_co_check`); the others cannot repair.
    let replays = format == Format::Vhdx && args.repair.is_some();
    let how = super::locks::ImageUse::new(replays, args.force_share);
    super::locks::lock_image(std::path::Path::new(filename), filename, format, how)?;
    let image = open_image(std::path::Path::new(filename), Some(format), replays)
        .map_err(|e| anyhow!("Could not open '{filename}': {}", io_reason(&e)))?;
    super::locks::lock_side_files(filename, &image, how)?;
    let AnyImage::Foreign(_, foreign) = &image else {
        return Err(anyhow!("'{filename}' is not a {} image", format.name()));
    };
    // qemu's checks of these formats cannot repair (-ENOTSUP).
    let result = match (foreign.check(), args.repair) {
        (Some(result), None) => result,
        (Some(result), Some(_)) if replays => result,
        _ => {
            eprintln!("img: {NOT_SUPPORTED_MESSAGE}");
            return Ok(EXIT_NOT_SUPPORTED);
        }
    };
    let found = result.map_err(|e| anyhow!("Check failed: {}", io_reason(&e)))?;
    for line in &found.messages {
        eprintln!("{line}");
    }
    if let Some(errno) = found.stopped_errno {
        let reason = super::os_text(&std::io::Error::from_raw_os_error(errno));
        return Err(anyhow!("Check failed: {reason}"));
    }
    let report = CheckReport {
        filename: filename.clone(),
        format: format.name().to_string(),
        corruptions: found.corruptions,
        corruptions_fixed: found.corruptions_fixed,
        leaks: found.leaks,
        // qemu reports cluster counts only for formats that count them.
        total_clusters: found.total_clusters,
        allocated_clusters: if found.total_clusters > 0 {
            found.allocated_clusters
        } else {
            0
        },
        fragmented_clusters: if found.total_clusters > 0 {
            found.fragmented_clusters
        } else {
            0
        },
        ..CheckReport::default()
    };
    if !args.quiet || args.output == OutputFormat::Json {
        let text = match args.output {
            OutputFormat::Human => report.render_human(),
            OutputFormat::Json => report.render_json(),
        };
        print!("{text}");
    }
    if let Some(msg) = report.failure_message() {
        eprintln!("{msg}");
    }
    Ok(report.exit_code())
}
