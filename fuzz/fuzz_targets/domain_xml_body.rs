//! The `domain_xml` fuzz target's body, shared with the stable test that
//! replays found inputs (tools/tests/vm_xml_fuzz_regressions.rs): reads
//! any bytes as a libvirt domain XML; a refusal must be one line, and
//! whatever is accepted must be written back into XML that reads back as
//! the same definition and writes the same text again.

use tools::vm::xml::parse_domain;

/// Runs one input.
pub fn domain_xml_body(data: &[u8]) {
    match parse_domain(data) {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "two-line error: {message:?}");
            assert!(message.len() < 1024, "long error: {} bytes", message.len());
        }
        Ok(def) => {
            let xml = def.to_xml();
            let again = match parse_domain(xml.as_bytes()) {
                Ok(again) => again,
                Err(e) => panic!("our own output does not parse: {e}\n{xml}"),
            };
            assert_eq!(again, def, "the written XML reads back differently:\n{xml}");
            assert_eq!(again.to_xml(), xml, "writing is not a fixed point");
        }
    }
}
