//! Links `vm` as a fixed-address executable (`-no-pie`): as a PIE its
//! dynamic loader applied 5,393 relative relocations at every start
//! (92% of the loader's time), each page of them a copy-on-write fault,
//! before `main`; a command such as `vm snapshot-revert` is timed from its
//! spawn. `img` stays as it is.

fn main() {
    println!("cargo:rustc-link-arg-bin=vm=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
