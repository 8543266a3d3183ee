//! The body of the `api_request` fuzz target, shared with the stable test
//! that replays inputs (api/tests/api_fuzz_regressions.rs), so both run
//! exactly the same steps.
//!
//! An input is the bytes a peer sends on `vmm`'s API socket. They go
//! through the bounded HTTP/1.1 request parser (`vmapi::http`), whole and
//! cut at a point the first byte chooses (a prefix must parse as
//! incomplete or fail the same way, never succeed differently); a complete
//! request's path is routed and its body decoded as vm.create's
//! `VmConfig` and vm.boot's body. The input is also decoded as a
//! `VmConfig` on its own. Whatever decodes must encode and decode back to
//! the same value; every error must be one line.

use vmapi::http::{parse_request, Limits, Parsed};
use vmapi::{Endpoint, VmBootConfig, VmConfig};

/// Small limits, so that the fuzzer reaches them.
fn limits() -> Limits {
    Limits {
        max_head: 2048,
        max_headers: 16,
        max_body: 16 << 10,
        deadline: std::time::Duration::from_secs(1),
    }
}

fn decode_config(bytes: &[u8]) {
    match serde_json::from_slice::<VmConfig>(bytes) {
        Ok(config) => {
            let again = serde_json::to_vec(&config).expect("a decoded config encodes");
            let back: VmConfig = serde_json::from_slice(&again).expect("an encoded config decodes");
            assert_eq!(back, config, "VmConfig does not round-trip");
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
}

/// Runs one input.
pub fn api_request_body(data: &[u8]) {
    let limits = limits();
    let whole = parse_request(data, &limits);
    if let Err(e) = &whole {
        assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
    }
    if let Some(&first) = data.first() {
        let cut = usize::from(first) * data.len() / 256;
        match (parse_request(&data[..cut], &limits), &whole) {
            (Ok(Parsed::Incomplete { .. }), _) => {}
            (
                Ok(Parsed::Complete { message, consumed }),
                Ok(Parsed::Complete {
                    message: m,
                    consumed: c,
                }),
            ) => {
                assert_eq!((&message, consumed), (m, *c), "a prefix parsed differently");
            }
            (Err(prefix), Err(full)) => assert_eq!(&prefix, full, "a prefix failed differently"),
            (prefix, full) => {
                // A prefix can fail only where the whole input fails too.
                panic!("prefix {prefix:?} but whole {full:?}")
            }
        }
    }
    if let Ok(Parsed::Complete { message, consumed }) = whole {
        assert!(consumed <= data.len());
        assert!(message.body.len() <= limits.max_body);
        if let Some(endpoint) = Endpoint::from_path(&message.path) {
            assert_eq!(Endpoint::from_path(&endpoint.path()), Some(endpoint));
        }
        decode_config(&message.body);
        if let Ok(boot) = serde_json::from_slice::<VmBootConfig>(&message.body) {
            let again = serde_json::to_vec(&boot).expect("encodes");
            assert_eq!(
                serde_json::from_slice::<VmBootConfig>(&again).expect("decodes"),
                boot
            );
        }
    }
    decode_config(data);
}

/// Seeds: requests as curl and `vmapi::Client` send them, with the
/// bodies `vm` sends.
pub fn api_request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let config = br#"{"cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":33554432},"payload":{"kernel":"/k","cmdline":"console=ttyS0","initramfs":"/i"},"disks":[{"path":"/a.qcow2","readonly":false,"direct":true,"id":"vda","image_type":"Qcow2"}],"serial":{"mode":"Socket","socket":"/run/console.sock","file":"/run/console.log"},"console":{"mode":"Off"}}"#;
    let put = |path: &str, body: &[u8]| {
        let mut request = format!(
            "PUT /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    vec![
        ("ping", b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n".to_vec()),
        ("info", b"GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("create", put("vm.create", config)),
        ("create-expect", {
            let mut r = b"PUT /api/v1/vm.create HTTP/1.1\r\nExpect: 100-continue\r\n".to_vec();
            r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", config.len()).as_bytes());
            r.extend_from_slice(config);
            r
        }),
        ("boot-paused", put("vm.boot", br#"{"paused": true}"#)),
        ("pause", put("vm.pause", b"")),
        ("config-only", config.to_vec()),
    ]
}
