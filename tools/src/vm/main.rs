//! `vm`: the virsh of this stack. `vm [-c DIR] [-q] COMMAND [ARGS...]`.

use tools::vm::cli::{self, Parsed};
use tools::vm::commands::{self, Ctx};
use tools::vm::output::{emit, flush};
use tools::vm::store::{default_dir, Store};
use tools::{eprintln, stdio};

fn main() {
    // virsh leaves SIGPIPE at its default: its first write to a closed
    // pipe, on stdout or stderr, ends it by SIGPIPE (see tools::stdio).
    stdio::on_closed_pipe(stdio::ClosedPipe::DieOfSigpipe);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match cli::parse(&args) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help) => {
            emit(&cli::help());
            return;
        }
        Ok(Parsed::Version) => {
            emit(&format!("{}\n", env!("CARGO_PKG_VERSION")));
            return;
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let dir = cli.dir.clone().unwrap_or_else(default_dir);
    let store = match Store::open(&dir) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: failed to connect to the store\nerror: {e}");
            std::process::exit(1);
        }
    };
    let ctx = Ctx {
        store,
        quiet: cli.quiet,
    };
    let mut out = String::new();
    let result = commands::run(&ctx, &cli.command, &mut out);
    // virsh prints an empty line after each command, failed or not,
    // unless -q.
    if !cli.quiet {
        out.push('\n');
    }
    flush(&mut out);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
