//! `img`: the qemu-img of this stack.

use tools::cli::{parse_or_exit, Command};
use tools::commands;
use tools::eprintln;
use tools::stdio::{on_closed_pipe, ClosedPipe};

fn main() {
    // qemu-img ignores SIGPIPE and every failed write to stdout or
    // stderr: a command whose reader is gone runs to its end and exits
    // with its own code (see tools::stdio). Rust ignores SIGPIPE already.
    on_closed_pipe(ClosedPipe::Ignore);
    if let Some(argv0) = std::env::args_os().next() {
        tools::set_program_name(&argv0);
    }
    let cli = parse_or_exit();
    qcow::backing_name::set_json_parser(commands::image_spec::backing_target);
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
