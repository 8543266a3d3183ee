//! `img`: the qemu-img of this stack.

use tools::cli::{parse_or_exit, Command};
use tools::commands;

fn main() {
    let cli = parse_or_exit();
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
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line, as qemu-img prints it.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{}: {msg}", tools::PROGRAM);
            std::process::exit(1);
        }
    }
}
