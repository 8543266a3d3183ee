//! The `api_request` fuzz target's body on stable (included from
//! `fuzz/fuzz_targets/`, so both run exactly the same steps): its seeds
//! (written to `API_FUZZ_SEEDS=DIR` when set, which is how
//! scripts/fuzz-seeds.sh makes the corpus) and every input under
//! `tests/api_fuzz_regressions/` (inputs the fuzzer found, and hand-made
//! ones) must run without a panic.

#[path = "../../fuzz/fuzz_targets/api_request_body.rs"]
mod api_request_body;

use api_request_body::{api_request_body, api_request_seeds};

#[test]
fn seeds_parse_and_decode() {
    let out_dir = std::env::var_os("API_FUZZ_SEEDS").map(std::path::PathBuf::from);
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, data) in api_request_seeds() {
        api_request_body(&data);
        if name != "config-only" {
            let parsed =
                vmapi::http::parse_request(&data, &vmapi::http::Limits::default()).unwrap();
            assert!(
                matches!(parsed, vmapi::http::Parsed::Complete { .. }),
                "{name}"
            );
        }
        if let Some(dir) = &out_dir {
            std::fs::write(dir.join(format!("{name}.bin")), &data).unwrap();
        }
    }
}

#[test]
fn regressions_run_clean() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api_fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        api_request_body(&data);
        count += 1;
    }
    assert!(count > 0, "no regression inputs in {dir}");
}
