//! The resource parts of a domain XML that the `resources` module acts
//! on: `<vcpu cpuset=>` here; `<cputune>` and `<memtune>` are kept as
//! given by the reader and read by [`crate::vm::resources::tune`].

use roxmltree::Node;

use super::units::truncate;
use super::XmlError;
use crate::vm::resources::cpuset::CpuSet;

/// `<vcpu cpuset=...>`, validated.
pub fn read_vcpu_cpuset(node: Node) -> Result<Option<CpuSet>, XmlError> {
    let Some(value) = node.attribute("cpuset") else {
        return Ok(None);
    };
    CpuSet::parse(value)
        .map(Some)
        .map_err(|reason| XmlError::BadValue {
            element: "vcpu/@cpuset".to_string(),
            value: truncate(value),
            reason,
        })
}
