//! `img`: the qemu-img of this stack.

use tools::cli::{parse_or_exit, Command};
use tools::commands;

/// Restores the default action of SIGPIPE (Rust's runtime ignores it), so
/// that writing into a closed pipe (`img map X | head -1`) ends img quietly
/// with the status of a program killed by SIGPIPE, as qemu-img ends.
fn die_on_sigpipe() {
    // SAFETY: signal() with SIG_DFL installs no handler of ours; it runs
    // first in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    die_on_sigpipe();
    if let Some(argv0) = std::env::args_os().next() {
        tools::set_program_name(&argv0);
    }
    let cli = parse_or_exit();
    commands::locks::set_force_share(cli.command.force_share());
    let result = match &cli.command {
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
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // As qemu-img's error_report prints it: the program name, then
            // the message (whose own line breaks it keeps).
            eprintln!("{}: {e:#}", tools::program());
            std::process::exit(1);
        }
    }
}
