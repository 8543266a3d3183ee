//! Resource allocation of a domain: host CPU sets ([`cpuset`]).

pub mod cpuset;
