//! Resource allocation of a domain: host CPU sets ([`cpuset`]),
//! `<cputune>` and `<memtune>` ([`tune`]), virsh's scaled sizes
//! ([`size`]), and the commands that change vCPUs and memory
//! ([`commands`]).

pub mod commands;
pub mod cpuset;
pub mod size;
pub mod tune;
