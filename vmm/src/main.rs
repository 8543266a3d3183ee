//! `vmm`: boot a Linux kernel (or the project's test guest) with
//! virtio-blk disks served from qcow2 or raw images.

use std::path::PathBuf;

use clap::Parser;
use vmm::config::{parse_disk, parse_memory, VmConfig};
use vmm::vm::{run, VmExit};

/// A minimal KVM VMM.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
struct Args {
    /// Linux bzImage or ELF vmlinux
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(
        long,
        value_name = "STR",
        default_value = "console=ttyS0 reboot=k panic=1"
    )]
    cmdline: String,
    /// Number of vCPUs
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Guest memory (e.g. 512M, 2G; a bare number is MiB)
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    /// A disk: path=IMG[,format=qcow2|raw][,readonly=on][,cache=none|writeback]
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// Seccomp filtering of the VMM's threads: on (default) or off
    #[arg(long, value_name = "on|off", default_value = "on")]
    seccomp: String,
    /// Print the time to the guest's first serial byte and to its exit
    #[arg(long)]
    timings: bool,
    /// Hide CPUID features from the guest: names (popcnt,xsave,...) or the
    /// preset "emulated" (what an instruction-emulating host cannot run)
    #[arg(long, value_name = "LIST", default_value = "")]
    cpuid_mask: String,
    /// Longest spin (microseconds, 0 to 1000) of the device thread on disk
    /// completions before it sleeps, adapted to how soon they come (as
    /// QEMU's iothread poll-max-ns); 0 never spins
    #[arg(long, value_name = "US", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=1000))]
    poll_us: u64,
}

fn config(args: &Args) -> anyhow::Result<VmConfig> {
    let disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>, _>>()?;
    let seccomp = match args.seccomp.as_str() {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("invalid --seccomp '{other}': expected on or off"),
    };
    Ok(VmConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus,
        memory: parse_memory(&args.memory)?,
        disks,
        seccomp,
        serial_input: true,
        cpuid_mask: vmm::cpu::parse_cpuid_mask(&args.cpuid_mask)?,
        poll_max: std::time::Duration::from_micros(args.poll_us),
    })
}

fn main() {
    let args = Args::parse();
    let console = vmm::console::RawConsole::enter();
    let outcome = config(&args).and_then(|c| Ok(run(&c)?));
    // Put the terminal back before any message (process::exit skips drops).
    drop(console);
    match outcome {
        Ok((exit, times)) => {
            if args.timings {
                let first = times.first_serial_byte.map_or("none".to_string(), |d| {
                    format!("{:.3} ms", d.as_secs_f64() * 1e3)
                });
                let setup = times.setup.map_or("none".to_string(), |d| {
                    format!("{:.3} ms", d.as_secs_f64() * 1e3)
                });
                eprintln!(
                    "vmm: setup (start to first KVM_RUN) {setup}, first serial byte {first}, exit {:.3} ms",
                    times.exit.as_secs_f64() * 1e3
                );
            }
            match exit {
                VmExit::Reset | VmExit::PowerOff => std::process::exit(0),
                VmExit::Signal(sig) => {
                    eprintln!("vmm: stopped by signal {sig}");
                    std::process::exit(0)
                }
                VmExit::Fault(msg) => {
                    eprintln!("vmm: {msg}");
                    std::process::exit(1)
                }
            }
        }
        Err(e) => {
            eprintln!("vmm: {}", format!("{e:#}").replace('\n', " "));
            std::process::exit(1)
        }
    }
}
