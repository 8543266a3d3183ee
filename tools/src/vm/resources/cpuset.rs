//! libvirt's cpuset syntax (`0-3,^2,8`): host CPU numbers as a validated
//! set, as `<vcpu cpuset=>`, `<vcpupin cpuset=>`, `<emulatorpin
//! cpuset=>` and `vcpupin`/`emulatorpin` take them.

/// The highest CPU number a set may name plus one (libvirt's
/// VIR_DOMAIN_CPUMASK_LEN).
pub const MAX_CPUS: usize = 16384;

/// A non-empty set of host CPU numbers, each under [`MAX_CPUS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    /// Parses libvirt's syntax: numbers and ranges separated by commas,
    /// `^N` taking one out. The message names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "cannot parse cpuset '{}'",
                text.chars().take(64).collect::<String>()
            )
        };
        let mut bits = vec![false; MAX_CPUS];
        for part in text.split(',') {
            let part = part.trim();
            if let Some(negated) = part.strip_prefix('^') {
                let cpu = cpu_number(negated).ok_or_else(bad)?;
                bits[cpu] = false;
                continue;
            }
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (
                    cpu_number(a).ok_or_else(bad)?,
                    cpu_number(b).ok_or_else(bad)?,
                ),
                None => {
                    let cpu = cpu_number(part).ok_or_else(bad)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(bad());
            }
            bits[first..=last].iter_mut().for_each(|b| *b = true);
        }
        let cpus: Vec<usize> = (0..MAX_CPUS).filter(|&c| bits[c]).collect();
        if cpus.is_empty() {
            return Err(format!("cpuset '{text}' names no CPU"));
        }
        Ok(CpuSet(cpus))
    }

    /// A set of the given CPUs (which must be under [`MAX_CPUS`]).
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut list: Vec<usize> = cpus.into_iter().filter(|c| *c < MAX_CPUS).collect();
        list.sort_unstable();
        list.dedup();
        CpuSet(list)
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// The highest CPU.
    pub fn max(&self) -> usize {
        *self.0.last().expect("a cpuset is never empty")
    }

    /// libvirt's compact form (`0-3,8`).
    pub fn format(&self) -> String {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
            i += 1;
        }
        parts.join(",")
    }

    /// virsh's affinity map of `host_cpus` CPUs (`yy-y`).
    pub fn map(&self, host_cpus: usize) -> String {
        (0..host_cpus)
            .map(|c| {
                if self.0.binary_search(&c).is_ok() {
                    'y'
                } else {
                    '-'
                }
            })
            .collect()
    }
}

fn cpu_number(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 6 {
        return None;
    }
    text.parse().ok().filter(|c| *c < MAX_CPUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exclusions_and_the_compact_form() {
        let set = CpuSet::parse("0-3,^2,8").unwrap();
        assert_eq!(set.cpus(), [0, 1, 3, 8]);
        assert_eq!(set.format(), "0-1,3,8");
        assert_eq!(set.map(4), "yy-y");
        assert_eq!(CpuSet::parse("1").unwrap().format(), "1");
    }

    #[test]
    fn refuses_garbage_empty_and_huge() {
        for text in ["", "a", "3-1", "1,,2", "99999", "-1", "^0", "0-16384"] {
            let e = CpuSet::parse(text).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
