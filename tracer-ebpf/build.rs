//! Rebuild the programs when the `bpf-linker` binary changes (cargo cannot track it otherwise).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found in PATH; run `cargo xtask setup` to install it"
        ),
    }
}
