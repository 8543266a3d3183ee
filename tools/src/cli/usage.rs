//! Command-line errors in qemu-img's words: clap's error kinds mapped to
//! the messages qemu-img's getopt loop and argument checks print, and the
//! positional-argument checks clap cannot express.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::values::UsageError;
use super::{Cli, Command};
use crate::opts::OptionList;
use crate::program;

/// A command line that does not run a subcommand: a usage error (exit 1,
/// stderr) or a help/version request (exit 0, stdout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// Full text to print, newline-terminated.
    pub message: String,
    /// Process exit code.
    pub exit_code: i32,
    /// True when the text belongs on stdout (help, version).
    pub to_stdout: bool,
}

impl CliError {
    /// A usage error from message lines (each printed as `img: LINE`),
    /// optionally followed by the "Try ... --help" hint.
    pub fn usage(lines: &[String], try_help_for: Option<Option<&str>>) -> Self {
        let mut message: String = lines
            .iter()
            .map(|line| format!("{}: {line}\n", program()))
            .collect();
        if let Some(subcommand) = try_help_for {
            message.push_str(&try_help_line(subcommand));
        }
        Self {
            message,
            exit_code: 1,
            to_stdout: false,
        }
    }

    /// Prints the message where it belongs and exits with the code.
    pub fn exit(&self) -> ! {
        use std::io::Write as _;
        if self.to_stdout {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(self.message.as_bytes());
            let _ = stdout.flush();
        } else {
            let _ = std::io::stderr().write_all(self.message.as_bytes());
        }
        std::process::exit(self.exit_code)
    }
}

/// `Try 'img SUBCOMMAND --help' for more info`, or `Try 'img --help' ...`.
fn try_help_line(subcommand: Option<&str>) -> String {
    match subcommand {
        Some(name) => format!("Try '{} {name} --help' for more info\n", program()),
        None => format!("Try '{} --help' for more info\n", program()),
    }
}

/// A getopt-style error: `img SUBCOMMAND: MESSAGE` and the help hint.
fn getopt_error(subcommand: Option<&str>, message: &str) -> CliError {
    let prefix = match subcommand {
        Some(name) => format!("{} {name}", program()),
        None => program().to_owned(),
    };
    CliError {
        message: format!("{prefix}: {message}\n{}", try_help_line(subcommand)),
        exit_code: 1,
        to_stdout: false,
    }
}

const SUBCOMMANDS: [&str; 7] = [
    "create", "info", "check", "convert", "resize", "compare", "map",
];

/// The message qemu-img prints when a subcommand gets too few
/// positionals, and whether the help hint follows.
fn missing_positional(subcommand: &str) -> (&'static str, bool) {
    match subcommand {
        "create" => ("Expecting image file name", true),
        "compare" => ("Expecting two image file names", true),
        "resize" => ("Expecting image file name and size", true),
        "convert" => ("Must specify image file name", false),
        _ => ("Expecting one image file name", true),
    }
}

/// The message for an extra positional argument.
fn extra_positional(subcommand: &str, argument: &str) -> String {
    match subcommand {
        "create" => format!("Unexpected argument: {argument}"),
        "resize" => "Extra argument(s) in command line".to_owned(),
        other => missing_positional(other).0.to_owned(),
    }
}

fn context_string(err: &clap::Error, kind: ContextKind) -> Option<String> {
    match err.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        _ => None,
    }
}

/// Converts a clap error into qemu-img's message for the same mistake.
pub(super) fn from_clap(err: &clap::Error, args: &[OsString]) -> CliError {
    let subcommand = args
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| SUBCOMMANDS.contains(a));
    match err.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
            if args.len() <= 1 =>
        {
            CliError::usage(&["Not enough arguments".to_owned()], Some(None))
        }
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => CliError {
            message: err.render().to_string(),
            exit_code: 0,
            to_stdout: true,
        },
        ErrorKind::MissingSubcommand => {
            CliError::usage(&["Not enough arguments".to_owned()], Some(None))
        }
        ErrorKind::InvalidSubcommand => {
            let name = context_string(err, ContextKind::InvalidSubcommand).unwrap_or_default();
            CliError::usage(&[format!("Command not found: {name}")], Some(None))
        }
        ErrorKind::UnknownArgument => {
            let arg = context_string(err, ContextKind::InvalidArg).unwrap_or_default();
            if arg.starts_with("--") {
                getopt_error(subcommand, &format!("unrecognized option '{arg}'"))
            } else if let Some(option) = arg.strip_prefix('-').and_then(|s| s.chars().next()) {
                getopt_error(subcommand, &format!("invalid option -- '{option}'"))
            } else {
                let name = subcommand.unwrap_or_default();
                CliError::usage(&[extra_positional(name, &arg)], Some(subcommand))
            }
        }
        ErrorKind::InvalidValue => {
            let last = args
                .last()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(long) = last.strip_prefix("--") {
                let long = long.split('=').next().unwrap_or_default();
                getopt_error(
                    subcommand,
                    &format!("option '--{long}' requires an argument"),
                )
            } else {
                let option = last.chars().last().unwrap_or('?');
                getopt_error(
                    subcommand,
                    &format!("option requires an argument -- '{option}'"),
                )
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let name = subcommand.unwrap_or_default();
            let (message, try_help) = missing_positional(name);
            CliError::usage(&[message.to_owned()], try_help.then_some(subcommand))
        }
        ErrorKind::ValueValidation => {
            let source = std::error::Error::source(err)
                .and_then(|source| source.downcast_ref::<UsageError>());
            match source {
                Some(usage) => CliError::usage(&usage.lines, usage.try_help.then_some(subcommand)),
                None => fallback(err, subcommand),
            }
        }
        _ => fallback(err, subcommand),
    }
}

/// Any other clap error: its first line, qemu-style.
fn fallback(err: &clap::Error, subcommand: Option<&str>) -> CliError {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    CliError::usage(&[first.to_owned()], Some(subcommand))
}

/// Positional checks clap cannot express because qemu-img lets `-o help`
/// stand in for the file names.
pub(super) fn check_positionals(cli: &Cli) -> Result<(), CliError> {
    let (options, enough, name) = match &cli.command {
        Command::Create(a) => (&a.options, a.filename.is_some(), "create"),
        Command::Convert(a) => (&a.options, a.files.len() >= 2, "convert"),
        _ => return Ok(()),
    };
    let list =
        OptionList::from_args(options).map_err(|e| CliError::usage(&[e.to_string()], None))?;
    if enough || list.has_help() {
        return Ok(());
    }
    let (message, try_help) = missing_positional(name);
    Err(CliError::usage(
        &[message.to_owned()],
        try_help.then_some(Some(name)),
    ))
}
