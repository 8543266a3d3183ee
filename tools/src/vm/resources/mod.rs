//! Resource allocation of a domain: host CPU sets ([`cpuset`]),
//! `<cputune>` and `<memtune>` ([`tune`]), virsh's scaled sizes
//! ([`size`]), the commands that change vCPUs and memory
//! ([`commands`]), and what a start applies ([`apply`]: thread affinity
//! through [`affinity`], limits through [`cgroup`]), and the limits of
//! a running domain ([`live`]).

pub mod affinity;
pub mod apply;
pub mod cgroup;
pub mod commands;
pub mod cpuset;
pub mod live;
pub mod size;
pub mod tune;
pub mod tune_commands;
