//! Builds the kernel programs (agent-ebpf) and hands the object to the agent, which
//! embeds it: the `nodetap` binary alone is what gets deployed.
//!
//! The eBPF crate is built with Debian's rustc (it ships a prebuilt `core` for
//! bpfel-unknown-none, see docs/design.md, "Platform facts") in its own target directory, with a clean
//! environment so the host build's flags do not leak into it.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("agent-ebpf");
    for path in [
        "agent-ebpf/src",
        "agent-ebpf/Cargo.toml",
        "agent-ebpf/.cargo/config.toml",
        "agent-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=NODETAP_BPF_RUSTC");

    let bpf_rustc = env::var("NODETAP_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    if !PathBuf::from(&bpf_rustc).exists() {
        panic!(
            "the eBPF programs need Debian's rustc at {bpf_rustc} (with the BPF core library); \
             run `cargo xtask setup` first"
        );
    }
    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .env("RUSTC", &bpf_rustc)
        .env("RUSTC_BOOTSTRAP", "1");
    for (key, _) in env::vars() {
        let inherited_build_setting = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC_WRAPPER")
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS";
        if inherited_build_setting {
            cmd.env_remove(&key);
        }
    }
    // Set after the clean-up above, which would otherwise remove it again when the host
    // build has its own CARGO_TARGET_DIR (`cargo xtask fuzz` does).
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    // bpf-linker lives in cargo's bin directory.
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let path = env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", home.join("bin").display()));
    let status = cmd.status().expect("could not run cargo for agent-ebpf");
    if !status.success() {
        panic!("building agent-ebpf failed (is bpf-linker installed? run `cargo xtask setup`)");
    }
    let object = target_dir.join("bpfel-unknown-none/release/nodetap");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("nodetap.bpf.o");
    std::fs::copy(&object, &out).expect("eBPF object missing after build");
}
