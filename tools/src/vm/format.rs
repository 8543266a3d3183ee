//! virsh's output layouts: the table of `list` and `domblklist` (libvirt's
//! vshTable), the `%-15s %s` lines of `dominfo`, state and reason names
//! with libvirt's enum numbers, and virsh's messages.

/// libvirt's virDomainState numbers.
pub mod state {
    /// VIR_DOMAIN_NOSTATE.
    pub const NOSTATE: u32 = 0;
    /// VIR_DOMAIN_RUNNING.
    pub const RUNNING: u32 = 1;
    /// VIR_DOMAIN_PAUSED.
    pub const PAUSED: u32 = 3;
    /// VIR_DOMAIN_SHUTDOWN (being shut down).
    pub const SHUTDOWN: u32 = 4;
    /// VIR_DOMAIN_SHUTOFF.
    pub const SHUTOFF: u32 = 5;
}

/// libvirt's reason numbers for the states we report.
pub mod reason {
    /// VIR_DOMAIN_RUNNING_BOOTED.
    pub const RUNNING_BOOTED: u32 = 1;
    /// VIR_DOMAIN_RUNNING_MIGRATED.
    pub const RUNNING_MIGRATED: u32 = 2;
    /// VIR_DOMAIN_RUNNING_UNPAUSED.
    pub const RUNNING_UNPAUSED: u32 = 5;
    /// VIR_DOMAIN_PAUSED_USER.
    pub const PAUSED_USER: u32 = 1;
    /// VIR_DOMAIN_PAUSED_MIGRATION.
    pub const PAUSED_MIGRATION: u32 = 2;
    /// VIR_DOMAIN_PAUSED_STARTING_UP.
    pub const PAUSED_STARTING_UP: u32 = 11;
    /// VIR_DOMAIN_SHUTOFF_UNKNOWN.
    pub const SHUTOFF_UNKNOWN: u32 = 0;
    /// VIR_DOMAIN_SHUTOFF_SHUTDOWN.
    pub const SHUTOFF_SHUTDOWN: u32 = 1;
    /// VIR_DOMAIN_SHUTOFF_DESTROYED.
    pub const SHUTOFF_DESTROYED: u32 = 2;
    /// VIR_DOMAIN_SHUTOFF_CRASHED.
    pub const SHUTOFF_CRASHED: u32 = 3;
    /// VIR_DOMAIN_SHUTOFF_MIGRATED.
    pub const SHUTOFF_MIGRATED: u32 = 4;
    /// VIR_DOMAIN_SHUTOFF_FAILED.
    pub const SHUTOFF_FAILED: u32 = 6;
}

/// virsh's name of a state (virshDomainStateToString).
pub fn state_name(state: u32) -> &'static str {
    match state {
        1 => "running",
        2 => "idle",
        3 => "paused",
        4 => "in shutdown",
        5 => "shut off",
        6 => "crashed",
        7 => "pmsuspended",
        _ => "no state",
    }
}

/// virsh's name of a state's reason (virshDomainStateReasonToString).
pub fn reason_name(state: u32, reason: u32) -> &'static str {
    let names: &[&str] = match state {
        1 => &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from snapshot",
            "unpaused",
            "migration canceled",
            "save canceled",
            "event wakeup",
            "crashed",
            "post-copy",
            "post-copy failed",
        ],
        3 => &[
            "unknown",
            "user",
            "migrating",
            "saving",
            "dumping",
            "I/O error",
            "watchdog",
            "from snapshot",
            "shutting down",
            "creating snapshot",
            "crashed",
            "starting up",
            "post-copy",
            "post-copy failed",
            "api error",
        ],
        4 => &["unknown", "user"],
        5 => &[
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from snapshot",
            "daemon",
        ],
        6 => &["unknown", "panicked"],
        _ => &["unknown"],
    };
    names.get(reason as usize).copied().unwrap_or("unknown")
}

/// libvirt's vshTable: each cell is a space, the text padded to its
/// column's widest entry (the header included unless quiet) and two
/// spaces, the last column unpadded; under the header a line of dashes
/// as long as the sum over columns of (widest + 3). Quiet (`-q`) prints
/// neither header nor dashes.
pub fn table(headers: &[&str], rows: &[Vec<String>], quiet: bool) -> String {
    let columns = headers.len();
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = if quiet {
        vec![0; columns]
    } else {
        headers.iter().map(|h| width(h)).collect()
    };
    for row in rows {
        for (column, cell) in row.iter().enumerate().take(columns) {
            widths[column] = widths[column].max(width(cell));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (column, cell) in cells.enumerate() {
            out.push(' ');
            out.push_str(cell);
            if column + 1 < columns {
                out.push_str(&" ".repeat(widths[column] - width(cell) + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = String::new();
    if !quiet {
        out.push_str(&line(&mut headers.iter().copied()));
        let dashes: usize = widths.iter().map(|w| w + 3).sum();
        out.push_str(&"-".repeat(dashes));
        out.push('\n');
    }
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// One `%-15s %s` line of `dominfo`, `domblkinfo`, `vcpuinfo`.
pub fn field(label: &str, value: impl std::fmt::Display) -> String {
    format!("{label:<15} {value}\n")
}

/// A CPU time in ns as virsh prints it (`%.1lfs`).
pub fn cpu_seconds(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

/// vshPrettyCapacity with `%.3lf %s`: bytes in the largest binary unit
/// under which the value is at least 1.
pub fn pretty_capacity(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut index = 0;
    while index + 1 < units.len() && bytes >= 1u64 << (10 * (index + 1)) {
        index += 1;
    }
    let value = bytes as f64 / (1u64 << (10 * index)) as f64;
    format!("{value:.3} {}", units[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter()
            .map(|row| row.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn table_matches_virsh_list() {
        let out = table(
            &["Id", "Name", "State"],
            &rows(&[
                &["1", "alpha", "running"],
                &["2", "gamma", "paused"],
                &["-", "beta-long-name", "shut off"],
            ]),
            false,
        );
        assert_eq!(
            out,
            " Id   Name             State\n\
             ---------------------------------\n \
             1    alpha            running\n \
             2    gamma            paused\n \
             -    beta-long-name   shut off\n"
        );
        let quiet = table(
            &["Id", "Name", "State"],
            &rows(&[
                &["1", "alpha", "running"],
                &["-", "beta-long-name", "shut off"],
            ]),
            true,
        );
        assert_eq!(
            quiet,
            " 1   alpha            running\n -   beta-long-name   shut off\n"
        );
        assert_eq!(
            table(&["Id", "Name", "State"], &[], false),
            " Id   Name   State\n--------------------\n"
        );
    }

    #[test]
    fn capacities_as_virsh_prints_them() {
        assert_eq!(pretty_capacity(1099506450432), "1023.995 GiB");
        assert_eq!(pretty_capacity(1 << 40), "1.000 TiB");
        assert_eq!(pretty_capacity(512), "512.000 B");
        assert_eq!(cpu_seconds(1_796_564_525_500_000_000), "1796564525.5s");
    }

    #[test]
    fn reasons_have_libvirt_names() {
        assert_eq!(
            reason_name(state::SHUTOFF, reason::SHUTOFF_CRASHED),
            "crashed"
        );
        assert_eq!(
            reason_name(state::RUNNING, reason::RUNNING_BOOTED),
            "booted"
        );
        assert_eq!(reason_name(state::PAUSED, reason::PAUSED_USER), "user");
        assert_eq!(reason_name(state::SHUTOFF, 99), "unknown");
        assert_eq!(state_name(state::SHUTOFF), "shut off");
    }
}
