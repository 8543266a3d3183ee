//! `img`: the qemu-img of this stack.

use tools::cli::{parse_or_exit, Command};
use tools::commands;

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a write to stdout failed because its reader is gone.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// qemu-img ignores SIGPIPE (qemu-img.c's main) and ends with status 0
/// and no message when its reader goes away (`qemu-img map X | head -1`);
/// img keeps Rust's ignored SIGPIPE and does the same. `println!` panics
/// on EPIPE: this hook marks that case and stays quiet, `main` unwinds the
/// command (closing its images as any return does) and exits 0. Progress
/// output ignores write errors, so a conversion is never cut short by its
/// reader. Every other panic reaches the default hook.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if payload.starts_with("failed printing to stdout") && payload.contains("Broken pipe") {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
        } else {
            default(info);
        }
    }));
}

fn main() {
    quiet_on_closed_stdout();
    if let Some(argv0) = std::env::args_os().next() {
        tools::set_program_name(&argv0);
    }
    let cli = parse_or_exit();
    qcow::backing_name::set_json_parser(commands::image_spec::backing_target);
    let run = std::panic::catch_unwind(|| match &cli.command {
        Command::Create(a) => commands::create::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Check(a) => commands::check::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Resize(a) => commands::resize::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Map(a) => commands::map::run(a),
        Command::Snapshot(a) => commands::snapshot::run(a),
        Command::Measure(a) => commands::measure::run(a),
        Command::Rebase(a) => commands::rebase::run(a),
        Command::Commit(a) => commands::commit::run(a),
        Command::Amend(a) => commands::amend::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Bitmap(a) => commands::bitmap::run(a),
        Command::Dd(a) => commands::dd::run(a),
    });
    let result = match run {
        Ok(result) => result,
        Err(_) if STDOUT_CLOSED.load(Ordering::SeqCst) => std::process::exit(0),
        Err(panic) => std::panic::resume_unwind(panic),
    };
    match result {
        Ok(code) => std::process::exit(code),
        // The report's writer met a closed stdout: quiet, as above.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::exit(0)
        }
        Err(e) => {
            // As qemu-img's error_report prints it: the program name, then
            // the message (whose own line breaks it keeps).
            eprintln!("{}: {e:#}", tools::program());
            std::process::exit(1);
        }
    }
}
