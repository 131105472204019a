//! `cargo xtask dist`: release artifacts in target/dist/.
//!
//! - `nodetap-<version>-x86_64-linux-gnu`: the agent linked against glibc 2.17's symbol
//!   versions (cargo-zigbuild, with zig from PyPI as the linker), so it runs on Amazon
//!   Linux 2, RHEL/CentOS 7 and 8, Ubuntu 18.04+, Debian 10+; debug info stripped.
//! - `nodetap_<version>-1_amd64.deb` (cargo-deb) and `nodetap-<version>-1.x86_64.rpm`
//!   (cargo-generate-rpm): that binary, the systemd unit, /etc/nodetap/nodetap.toml, and
//!   the `nodetap` system user created at install.
//! - `nodetap-<version>-oci.tar`: an OCI image archive built by buildah from
//!   deploy/container/Containerfile: the binary and the shared libraries it links.
//! - `nodetap-<version>-aarch64-linux-gnu`: the same for arm64 (Graviton), cross-linked by
//!   cargo-zigbuild against glibc 2.17 with rustup's aarch64 standard library. The eBPF
//!   object is the same bytecode; its socket tier reads x86-64 registers, so on arm64
//!   the agent counts and does not parse (README "Deploy"). No package or image yet.
//!
//! tests/tests/dist.rs checks what this writes (symbol versions, package contents, the
//! .deb installed and its unit verified, the image's binary run).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// Oldest glibc the binary must run on (RHEL 7, Amazon Linux 2: 2.17 and 2.26).
pub const GLIBC_FLOOR: &str = "2.17";
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
pub const ARM64_TRIPLE: &str = "aarch64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent for `triple` against glibc [`GLIBC_FLOOR`] (cargo-zigbuild), copied to
/// `out` without its debug info by `objcopy`.
fn build_stripped(root: &Path, triple: &str, objcopy: &str, out: &Path) -> Result<()> {
    run_cmd(Command::new("cargo").current_dir(root).args([
        "zigbuild",
        "--release",
        "--package",
        "nodetap",
        "--target",
        &format!("{triple}.{GLIBC_FLOOR}"),
    ]))?;
    let built = root.join("target").join(triple).join("release/nodetap");
    run_cmd(
        Command::new(objcopy)
            .arg("--strip-debug")
            .arg(&built)
            .arg(out),
    )
}

pub fn run(root: &Path) -> Result<()> {
    let dist = root.join("target/dist");
    fs::create_dir_all(&dist).with_context(|| format!("create {}", dist.display()))?;

    // The eBPF object is built by agent/build.rs for the host as before; only the
    // userspace link changes target.
    let bin = dist.join(format!("nodetap-{VERSION}-x86_64-linux-gnu"));
    build_stripped(root, TRIPLE, "objcopy", &bin)?;

    run_cmd(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "deb",
                "--package",
                "nodetap",
                "--no-build",
                "--target",
                TRIPLE,
                "--output",
            ])
            .arg(&dist),
    )?;
    run_cmd(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "generate-rpm",
                "--package",
                "agent",
                "--target",
                TRIPLE,
                "--output",
            ])
            .arg(&dist),
    )?;

    let archive = image(root, &dist, &bin)?;

    // arm64: the binary alone (the .deb, .rpm and image above are x86_64).
    let arm64 = dist.join(format!("nodetap-{VERSION}-aarch64-linux-gnu"));
    // Debian's x86_64 objcopy does not know aarch64; LLVM's (installed for bpf-linker)
    // knows every target.
    build_stripped(
        root,
        ARM64_TRIPLE,
        "/usr/lib/llvm-22/bin/llvm-objcopy",
        &arm64,
    )?;
    eprintln!(
        "xtask: dist ready in {}:\n  {}\n  .deb, .rpm\n  {}\n  {}",
        dist.display(),
        bin.display(),
        archive.display(),
        arm64.display()
    );
    Ok(())
}

/// The build context: rootfs/ with the binary, its libraries at the paths the dynamic
/// loader looks in, and the default configuration.
fn container_context(root: &Path, dist: &Path, bin: &Path) -> Result<PathBuf> {
    let context = dist.join("container");
    if context.exists() {
        fs::remove_dir_all(&context)?;
    }
    let rootfs = context.join("rootfs");
    let copy = |from: &Path, to: &str| -> Result<()> {
        let dest = rootfs.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("absolute path"))?;
        // fs::copy follows symlinks: the library's content lands at the linked name.
        fs::copy(from, &dest)
            .with_context(|| format!("copy {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    copy(bin, "/usr/bin/nodetap")?;
    copy(
        &root.join("deploy/package/nodetap.toml"),
        "/etc/nodetap/nodetap.toml",
    )?;
    for library in linked_libraries(bin)? {
        copy(Path::new(&library), &library)?;
    }
    Ok(context)
}

/// Absolute paths of the shared objects `bin` loads, the dynamic loader included
/// (`ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`).
fn linked_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output().context("run ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", bin.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

fn image(root: &Path, dist: &Path, bin: &Path) -> Result<PathBuf> {
    let context = container_context(root, dist, bin)?;
    let tag = format!("localhost/nodetap:{VERSION}");
    // vfs and chroot isolation: no overlay mounts or user namespaces needed, so this
    // runs inside CI containers too.
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.args(["--storage-driver", "vfs"]).args(args);
        cmd
    };
    let containerfile = root.join("deploy/container/Containerfile");
    run_cmd(
        buildah(&[
            "bud",
            "--isolation",
            "chroot",
            "--layers=false",
            "-t",
            &tag,
            "-f",
        ])
        .arg(&containerfile)
        .arg(&context),
    )?;
    let archive = dist.join(format!("nodetap-{VERSION}-oci.tar"));
    let _ = fs::remove_file(&archive);
    run_cmd(&mut buildah(&[
        "push",
        &tag,
        &format!("oci-archive:{}:nodetap:{VERSION}", archive.display()),
    ]))?;
    Ok(archive)
}
