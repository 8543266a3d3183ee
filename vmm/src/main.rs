//! `vmm`: boot a Linux kernel (or the project's test guest) with
//! virtio-blk disks served from qcow2 or raw images, and serve Cloud
//! Hypervisor's control API on `--api-socket`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vmm::config::{parse_disk, parse_memory, SerialSpec, VmConfig, VmmOptions};
use vmm::control::{Controller, Ending};
use vmm::vm::{RunTimes, VmExit};

/// A minimal KVM VMM.
#[derive(Debug, Parser)]
#[command(name = "vmm", disable_version_flag = true)]
struct Args {
    /// Print `vmm vX.Y.Z` and exit
    #[arg(short = 'V', long)]
    version: bool,
    /// Serve the control API (Cloud Hypervisor's REST API) on this Unix
    /// socket: PATH or path=PATH. Without --kernel, wait for vm.create and
    /// vm.boot
    #[arg(long, value_name = "PATH")]
    api_socket: Option<String>,
    /// Linux bzImage or ELF vmlinux (required without --api-socket)
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
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
    /// A disk: path=IMG[,format=qcow2|raw|vmdk|vhdx|vpc|vdi|qed][,readonly=on][,cache=none|writeback]
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// A network interface (virtio-net): tap=NAME[,mac=MAC][,num_queues=N]
    /// [,queue_size=N][,id=ID], or fd=N (fd=[N,M] for two queue pairs) for
    /// inherited tap queues
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
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
    /// Keep the code of this program (the client managing the VMM, such
    /// as vm) and of the VMM itself mapped and, where allowed, locked in
    /// memory while the VMM runs
    #[arg(long, value_name = "PATH")]
    keep_resident: Option<PathBuf>,
}

fn options(args: &Args) -> anyhow::Result<VmmOptions> {
    let seccomp = match args.seccomp.as_str() {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("invalid --seccomp '{other}': expected on or off"),
    };
    Ok(VmmOptions {
        seccomp,
        serial_input: true,
        cpuid_mask: vmm::cpu::parse_cpuid_mask(&args.cpuid_mask)?,
        poll_max: std::time::Duration::from_micros(args.poll_us),
    })
}

/// The VM of the command line, if `--kernel` is given.
fn config(args: &Args, options: &VmmOptions) -> anyhow::Result<Option<VmConfig>> {
    let Some(kernel) = &args.kernel else {
        if args.api_socket.is_none() {
            anyhow::bail!("--kernel is required (or --api-socket to wait for vm.create)");
        }
        return Ok(None);
    };
    let disks = args
        .disks
        .iter()
        .enumerate()
        .map(|(index, d)| {
            parse_disk(d).map(|mut disk| {
                disk.id = format!("_disk{index}");
                disk
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let net = args
        .nets
        .iter()
        .enumerate()
        .map(|(index, spec)| vmm::net_config::parse_net(spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    let disk_ids: Vec<&str> = disks.iter().map(|d| d.id.as_str()).collect();
    vmm::net_config::check_ids(&net, &disk_ids)?;
    vmm::config::check_devices(disks.len(), net.len())?;
    Ok(Some(VmConfig {
        kernel: kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus,
        memory: parse_memory(&args.memory)?,
        disks,
        net,
        seccomp: options.seccomp,
        serial_input: options.serial_input,
        serial: SerialSpec::Tty,
        cpuid_mask: options.cpuid_mask.clone(),
        poll_max: options.poll_max,
    }))
}

/// `PATH` or Cloud Hypervisor's `path=PATH`.
fn api_socket_path(spec: &str) -> anyhow::Result<PathBuf> {
    let path = match spec.split_once('=') {
        Some(("path", path)) => path,
        Some((key, _)) if !spec.starts_with('/') && !spec.starts_with('.') => {
            anyhow::bail!(
                "invalid --api-socket '{spec}': unknown key '{key}' (expected PATH or path=PATH)"
            )
        }
        _ => spec,
    };
    if path.is_empty() {
        anyhow::bail!("invalid --api-socket '{spec}': empty path");
    }
    Ok(PathBuf::from(path))
}

fn run(args: &Args, started: Instant) -> anyhow::Result<(Ending, Option<RunTimes>)> {
    let options = options(args)?;
    let config = config(args, &options)?;
    if let Some(client) = &args.keep_resident {
        vmm::resident::keep_in_background(client.clone());
    }
    let mut controller = Controller::new(options.clone(), started)?;
    if let Some(spec) = &args.api_socket {
        let path = api_socket_path(spec)?;
        controller.attach_api(vmm::api_server::start(&path, options.seccomp)?);
    }
    if let Some(config) = config {
        if let Err(e) = controller.boot_now(config) {
            controller.remove_sockets_now();
            return Err(e.into());
        }
    }
    Ok(controller.run()?)
}

fn print_timings(times: &RunTimes) {
    let ms = |d: Option<std::time::Duration>| {
        d.map_or("none".to_string(), |d| {
            format!("{:.3} ms", d.as_secs_f64() * 1e3)
        })
    };
    eprintln!(
        "vmm: setup (start to first KVM_RUN) {}, first serial byte {}, exit {:.3} ms",
        ms(times.setup),
        ms(times.first_serial_byte),
        times.exit.as_secs_f64() * 1e3
    );
}

fn main() {
    let started = Instant::now();
    let args = Args::parse();
    if args.version {
        println!("vmm v{}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let console = if args.kernel.is_some() {
        vmm::console::RawConsole::enter()
    } else {
        None
    };
    let outcome = run(&args, started);
    // Put the terminal back before any message (process::exit skips drops).
    drop(console);
    match outcome {
        Ok((ending, times)) => {
            if args.timings {
                if let Some(times) = &times {
                    print_timings(times);
                }
            }
            match ending {
                Ending::VmmShutdown | Ending::Guest(VmExit::Reset | VmExit::PowerOff) => {
                    std::process::exit(0)
                }
                Ending::Guest(VmExit::Signal(sig)) => {
                    eprintln!("vmm: stopped by signal {sig}");
                    std::process::exit(0)
                }
                Ending::Guest(VmExit::Fault(msg)) => {
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
