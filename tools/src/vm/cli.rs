//! virsh's command-line grammar: global options (`-c DIR`, `-q`), then a
//! command whose options are given by name (`--domain X`, `--domain=X`) or
//! by position, booleans once each, with virsh's messages for every
//! mistake.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// How an option takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag (`--all`).
    Bool,
    /// A value, by name or by position.
    Data,
    /// Every remaining positional argument.
    Argv,
    /// Every argument after the command as given: the command has a
    /// grammar of its own (`install`: virt-install's).
    Raw,
}

/// One option of a command.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// Its name without dashes.
    pub name: &'static str,
    /// How it takes its value.
    pub kind: Kind,
    /// Whether the command needs it.
    pub required: bool,
}

const fn flag(name: &'static str) -> Opt {
    Opt {
        name,
        kind: Kind::Bool,
        required: false,
    }
}

const fn data(name: &'static str, required: bool) -> Opt {
    Opt {
        name,
        kind: Kind::Data,
        required,
    }
}

const DOMAIN: Opt = data("domain", true);

/// A command: its name and options.
#[derive(Debug)]
pub struct CommandSpec {
    /// The command's name.
    pub name: &'static str,
    /// Its options, positional ones in position order.
    pub opts: &'static [Opt],
}

/// Every command `vm` knows.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "define",
        opts: &[data("file", true), flag("validate")],
    },
    CommandSpec {
        name: "undefine",
        opts: &[
            DOMAIN,
            flag("remove-all-storage"),
            flag("snapshots-metadata"),
        ],
    },
    CommandSpec {
        name: "dumpxml",
        opts: &[DOMAIN, flag("inactive"), flag("security-info")],
    },
    CommandSpec {
        name: "start",
        opts: &[DOMAIN, flag("console"), flag("paused")],
    },
    CommandSpec {
        name: "shutdown",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "destroy",
        opts: &[DOMAIN, flag("graceful")],
    },
    CommandSpec {
        name: "reboot",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "reset",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "suspend",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "resume",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "list",
        opts: &[
            flag("inactive"),
            flag("all"),
            flag("persistent"),
            flag("transient"),
            flag("state-running"),
            flag("state-paused"),
            flag("state-shutoff"),
            flag("state-other"),
            flag("uuid"),
            flag("name"),
            flag("id"),
            flag("table"),
        ],
    },
    CommandSpec {
        name: "dominfo",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "domstate",
        opts: &[DOMAIN, flag("reason")],
    },
    CommandSpec {
        name: "domid",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "domname",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "domuuid",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "domstats",
        opts: &[
            flag("state"),
            flag("cpu-total"),
            flag("balloon"),
            flag("vcpu"),
            flag("block"),
            flag("interface"),
            flag("list-active"),
            flag("list-inactive"),
            flag("list-running"),
            flag("list-paused"),
            flag("list-shutoff"),
            flag("raw"),
            flag("enforce"),
            Opt {
                name: "domain",
                kind: Kind::Argv,
                required: false,
            },
        ],
    },
    CommandSpec {
        name: "domblklist",
        opts: &[DOMAIN, flag("inactive"), flag("details")],
    },
    CommandSpec {
        name: "domiflist",
        opts: &[DOMAIN, flag("inactive")],
    },
    CommandSpec {
        name: "attach-interface",
        opts: &[
            DOMAIN,
            data("type", true),
            data("source", true),
            data("target", false),
            data("mac", false),
            data("model", false),
            flag("config"),
            flag("live"),
            flag("current"),
            flag("persistent"),
        ],
    },
    CommandSpec {
        name: "detach-interface",
        opts: &[
            DOMAIN,
            data("type", true),
            data("mac", false),
            flag("config"),
            flag("live"),
            flag("current"),
            flag("persistent"),
        ],
    },
    CommandSpec {
        name: "domifstat",
        opts: &[DOMAIN, data("interface", true)],
    },
    CommandSpec {
        name: "domblkstat",
        opts: &[DOMAIN, data("device", false), flag("human")],
    },
    CommandSpec {
        name: "domblkinfo",
        opts: &[DOMAIN, data("device", false), flag("human"), flag("all")],
    },
    CommandSpec {
        name: "vcpucount",
        opts: &[
            DOMAIN,
            flag("maximum"),
            flag("active"),
            flag("live"),
            flag("config"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "vcpuinfo",
        opts: &[DOMAIN, flag("pretty")],
    },
    CommandSpec {
        name: "dommemstat",
        opts: &[DOMAIN],
    },
    CommandSpec {
        name: "nodeinfo",
        opts: &[],
    },
    CommandSpec {
        name: "console",
        opts: &[DOMAIN, flag("force"), flag("safe")],
    },
    CommandSpec {
        name: "snapshot-create-as",
        opts: &[
            DOMAIN,
            data("name", false),
            data("description", false),
            flag("disk-only"),
            flag("halt"),
        ],
    },
    CommandSpec {
        name: "snapshot-list",
        opts: &[DOMAIN, flag("parent"), flag("name")],
    },
    CommandSpec {
        name: "snapshot-info",
        opts: &[DOMAIN, data("snapshotname", false), flag("current")],
    },
    CommandSpec {
        name: "snapshot-current",
        opts: &[DOMAIN, flag("name"), data("snapshotname", false)],
    },
    CommandSpec {
        name: "snapshot-revert",
        opts: &[
            DOMAIN,
            data("snapshotname", false),
            flag("current"),
            flag("running"),
            flag("paused"),
        ],
    },
    CommandSpec {
        name: "snapshot-delete",
        opts: &[DOMAIN, data("snapshotname", false), flag("current")],
    },
    CommandSpec {
        name: "migrate",
        opts: &[
            DOMAIN,
            data("desturi", true),
            flag("live"),
            flag("copy-storage-all"),
            flag("copy-storage-inc"),
            flag("suspend"),
            data("timeout", false),
            data("downtime-ms", false),
            flag("verbose"),
        ],
    },
    CommandSpec {
        name: "clone",
        opts: &[
            data("original", false),
            data("name", false),
            flag("auto-clone"),
            flag("linked"),
            data("from-snapshot", false),
            flag("running"),
            flag("paused"),
            Opt {
                name: "file",
                kind: Kind::Argv,
                required: false,
            },
        ],
    },
    CommandSpec {
        name: "migrate-listen",
        opts: &[data("uri", true), data("xml", false)],
    },
    CommandSpec {
        name: "setvcpus",
        opts: &[
            DOMAIN,
            data("count", true),
            flag("maximum"),
            flag("config"),
            flag("live"),
            flag("current"),
            flag("guest"),
            flag("hotpluggable"),
        ],
    },
    CommandSpec {
        name: "setmem",
        opts: &[
            DOMAIN,
            data("size", true),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "setmaxmem",
        opts: &[
            DOMAIN,
            data("size", true),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "vcpupin",
        opts: &[
            DOMAIN,
            data("vcpu", false),
            data("cpulist", false),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "emulatorpin",
        opts: &[
            DOMAIN,
            data("cpulist", false),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "schedinfo",
        opts: &[
            DOMAIN,
            data("set", false),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "memtune",
        opts: &[
            DOMAIN,
            data("hard-limit", false),
            data("soft-limit", false),
            data("swap-hard-limit", false),
            flag("config"),
            flag("live"),
            flag("current"),
        ],
    },
    CommandSpec {
        name: "install",
        opts: &[Opt {
            name: "virt-install-options",
            kind: Kind::Raw,
            required: false,
        }],
    },
];

/// A command line error, in virsh's words (printed after `error: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A parsed command: which one and the options it was given.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The command.
    pub spec: &'static CommandSpec,
    flags: BTreeSet<&'static str>,
    values: BTreeMap<&'static str, String>,
    argv: Vec<String>,
}

impl Invocation {
    /// The command's name.
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// Whether flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    /// The value of option `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of a required option (the parser made sure it is there).
    pub fn required(&self, name: &str) -> &str {
        self.value(name).unwrap_or_default()
    }

    /// The arguments of an argv option.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }
}

/// The whole command line.
#[derive(Debug, Clone)]
pub struct Cli {
    /// The store folder (`-c DIR`), if given.
    pub dir: Option<PathBuf>,
    /// `-q`: no headers, no empty line after each command.
    pub quiet: bool,
    /// The command.
    pub command: Invocation,
}

/// What the command line asks for besides a command.
#[derive(Debug)]
pub enum Parsed {
    /// Run a command.
    Run(Cli),
    /// `--help` or no command.
    Help,
    /// `--version`.
    Version,
}

/// Parses `vm`'s arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Parsed, UsageError> {
    let mut dir = None;
    let mut quiet = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "-c" | "--connect" => {
                let value = args
                    .get(i + 1)
                    .ok_or_else(|| UsageError(format!("option '{arg}' requires an argument")))?;
                dir = Some(PathBuf::from(value));
                i += 2;
            }
            "-q" | "--quiet" => {
                quiet = true;
                i += 1;
            }
            "-h" | "--help" => return Ok(Parsed::Help),
            "-v" | "-V" | "--version" => return Ok(Parsed::Version),
            _ if arg.starts_with("--connect=") => {
                dir = Some(PathBuf::from(&arg["--connect=".len()..]));
                i += 1;
            }
            _ if arg.starts_with('-') => {
                return Err(UsageError(format!(
                    "unsupported option '{arg}'. See --help."
                )))
            }
            _ => break,
        }
    }
    let Some(name) = args.get(i) else {
        return Ok(Parsed::Help);
    };
    if name == "help" {
        return Ok(Parsed::Help);
    }
    let command = parse_command(name, &args[i + 1..])?;
    Ok(Parsed::Run(Cli {
        dir,
        quiet,
        command,
    }))
}

/// Parses one command's arguments as virsh's vshCommandParse does.
pub fn parse_command(name: &str, args: &[String]) -> Result<Invocation, UsageError> {
    let spec = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| UsageError(format!("unknown command: '{name}'")))?;
    let mut inv = Invocation {
        spec,
        flags: BTreeSet::new(),
        values: BTreeMap::new(),
        argv: Vec::new(),
    };
    if spec.opts.iter().any(|o| o.kind == Kind::Raw) {
        inv.argv = args.to_vec();
        return Ok(inv);
    }
    let mut seen_argv = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if let Some(long) = arg.strip_prefix("--").filter(|l| !l.is_empty()) {
            let (opt_name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let opt = spec
                .opts
                .iter()
                .find(|o| o.name == opt_name)
                .ok_or_else(|| {
                    UsageError(format!(
                        "command '{}' doesn't support option --{opt_name}",
                        spec.name
                    ))
                })?;
            let already = || UsageError(format!("option --{} already seen", opt.name));
            match opt.kind {
                Kind::Bool => {
                    if inline.is_some() {
                        return Err(UsageError(format!(
                            "command '{}' doesn't support option --{long}",
                            spec.name
                        )));
                    }
                    if !inv.flags.insert(opt.name) {
                        return Err(already());
                    }
                }
                Kind::Data | Kind::Argv | Kind::Raw => {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            let v = args.get(i).ok_or_else(|| {
                                UsageError(format!("expected syntax: --{} <string>", opt.name))
                            })?;
                            i += 1;
                            v.clone()
                        }
                    };
                    if opt.kind == Kind::Argv {
                        inv.argv.push(value);
                        seen_argv = true;
                    } else if inv.values.insert(opt.name, value).is_some() {
                        return Err(already());
                    }
                }
            }
            continue;
        }
        // A positional argument: the first data option not yet given.
        let slot = spec.opts.iter().find(|o| match o.kind {
            Kind::Data => !inv.values.contains_key(o.name),
            Kind::Argv => true,
            Kind::Bool | Kind::Raw => false,
        });
        match slot {
            Some(opt) if opt.kind == Kind::Argv => {
                inv.argv.push(arg.clone());
                seen_argv = true;
            }
            Some(opt) => {
                inv.values.insert(opt.name, arg.clone());
            }
            None => return Err(UsageError(format!("unexpected data '{arg}'"))),
        }
    }
    let _ = seen_argv;
    for opt in spec.opts.iter().filter(|o| o.required) {
        if !inv.values.contains_key(opt.name) {
            return Err(UsageError(format!(
                "command '{}' requires <{}> option",
                spec.name, opt.name
            )));
        }
    }
    Ok(inv)
}

/// The text of `vm --help`.
pub fn help() -> String {
    let mut out = String::from(
        "Usage: vm [-c DIR] [-q] COMMAND [ARGS...]\n\n  \
         -c, --connect DIR  the store folder (else $VM_DIR, else /var/lib/vm for root,\n                     \
         $XDG_DATA_HOME/vm for others)\n  \
         -q, --quiet        no table headers, no empty line after the output\n\n\
         Commands (as virsh's):\n",
    );
    for spec in COMMANDS {
        out.push_str("    ");
        out.push_str(spec.name);
        for opt in spec.opts {
            match (opt.kind, opt.required) {
                (Kind::Bool, _) => out.push_str(&format!(" [--{}]", opt.name)),
                (Kind::Data, true) => out.push_str(&format!(" <{}>", opt.name)),
                (Kind::Data, false) => out.push_str(&format!(" [<{}>]", opt.name)),
                (Kind::Argv, _) => out.push_str(&format!(" [<{}>...]", opt.name)),
                (Kind::Raw, _) => out.push_str(&format!(" [{}...]", opt.name)),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn err(line: &str) -> String {
        match parse(&args(line)) {
            Err(e) => e.0,
            Ok(p) => panic!("{line} parsed: {p:?}"),
        }
    }

    fn run(line: &str) -> Cli {
        match parse(&args(line)).unwrap() {
            Parsed::Run(cli) => cli,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn virsh_messages_for_mistakes() {
        assert_eq!(err("frob"), "unknown command: 'frob'");
        assert_eq!(
            err("list --bogus"),
            "command 'list' doesn't support option --bogus"
        );
        assert_eq!(err("dominfo"), "command 'dominfo' requires <domain> option");
        assert_eq!(err("dominfo a b"), "unexpected data 'b'");
        assert_eq!(
            err("dominfo --domain"),
            "expected syntax: --domain <string>"
        );
        assert_eq!(err("list --all --all"), "option --all already seen");
        assert_eq!(err("list x"), "unexpected data 'x'");
    }

    #[test]
    fn options_by_name_or_position() {
        let cli = run("-c /tmp/s -q dominfo --domain=x");
        assert_eq!(cli.dir, Some(PathBuf::from("/tmp/s")));
        assert!(cli.quiet);
        assert_eq!(cli.command.required("domain"), "x");
        let cli = run("domblkstat --human x vda");
        assert_eq!(cli.command.value("device"), Some("vda"));
        assert!(cli.command.flag("human"));
        let cli = run("domblkstat --device vda x");
        assert_eq!(cli.command.required("domain"), "x");
        let cli = run("domstats --raw a b --domain c");
        assert_eq!(cli.command.argv(), ["a", "b", "c"]);
    }
}
