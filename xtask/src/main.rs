//! Project tasks: `cargo xtask setup | build | run | test | test-kernels | bench <what>`.

mod bench;
mod dist;
mod fuzz;
mod test_kernels;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "nodetap project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent; quick when done).
    Setup,
    /// Build the eBPF object and the `nodetap` binary that embeds it (release).
    Build,
    /// Set up, build, and run the agent with its defaults (extra arguments follow `--`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every check and test: fmt, clippy, unit and integration.
    Test,
    /// Release artifacts in target/dist/: a binary for glibc 2.17+, .deb, .rpm, and an
    /// OCI image archive (README "Deploy").
    Dist,
    /// Boot a second kernel (Debian's 6.1 cloud kernel, the EKS floor) under qemu and
    /// run `--check` and the capture exactness checks there (docs/kernels.md).
    TestKernels {
        /// Debian kernel image package (a meta-package such as linux-image-cloud-amd64,
        /// or a versioned linux-image-6.1.0-NN-cloud-amd64).
        #[arg(long, default_value = test_kernels::DEFAULT_PACKAGE)]
        package: String,
        /// Seconds the guest may take before the run fails (emulation is slow).
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Virtual CPUs of the guest.
        #[arg(long, default_value_t = 2)]
        smp: u32,
        /// Start the guest's agent with `--capture-mode MODE` (default: auto, and the
        /// tier must be the one the kernel allows).
        #[arg(long, value_name = "MODE", value_parser = ["auto", "socket", "syscall"])]
        capture_mode: Option<String>,
    },
    /// Coverage-guided fuzzing (AFL++ through cargo-afl, stable Rust) of one target of
    /// `nodetap::fuzzing::TARGETS`, or `all` of them one after another, seeded from
    /// tests/fixtures. Fails if AFL++ saved a crash or a hang.
    Fuzz {
        /// A target of `nodetap::fuzzing::TARGETS` (a wrong name lists them), several
        /// separated by commas, or `all`.
        target: String,
        /// How long to fuzz each target (default 60 unless `--executions` is given; with
        /// it, a cap).
        #[arg(long)]
        seconds: Option<u64>,
        /// Fuzz each target until it has run this many executions (the long runs:
        /// 10000000).
        #[arg(long)]
        executions: Option<u64>,
        /// How many targets to fuzz at once (one afl-fuzz process each).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Write the run into BENCHMARKS.md (the long runs; CI's smoke run does not).
        #[arg(long)]
        record: bool,
    },
    /// Benchmarks (not tests): measure with and without the agent in one run and write
    /// the result into BENCHMARKS.md.
    Bench {
        #[arg(value_enum)]
        what: bench::What,
        /// How long `bench soak` runs its load.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build().map(|_| ()),
        Task::Run { args } => {
            setup()?;
            let bin = build()?;
            require_root("the agent loads eBPF programs")?;
            let err = exec(&bin, &args);
            Err(err).context("could not start nodetap")
        }
        Task::Test => test(),
        Task::Dist => {
            setup()?;
            dist::run(&root())
        }
        Task::TestKernels {
            package,
            timeout,
            smp,
            capture_mode,
        } => test_kernels::run(&test_kernels::Options {
            package,
            timeout: std::time::Duration::from_secs(timeout),
            smp,
            capture_mode,
        }),
        Task::Fuzz {
            target,
            seconds,
            executions,
            jobs,
            record,
        } => {
            setup()?;
            let budget = fuzz::Budget {
                seconds: seconds.or(if executions.is_none() { Some(60) } else { None }),
                executions,
            };
            let outcomes = fuzz::run(&root(), &target, budget, jobs)?;
            if record {
                fuzz::record(&root(), &target, budget, jobs, &outcomes)?;
            }
            fuzz::check(&root(), &outcomes)
        }
        Task::Bench { what, minutes } => {
            setup()?;
            let bin = build()?;
            require_root("benchmarks run the agent")?;
            bench::run(what, minutes, &bin, &root())
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn require_root(why: &str) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("run this as root: {why}");
    }
    Ok(())
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn exec(bin: &Path, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(bin).args(args).exec()
}

/// Debian packages the build and tests need, with a file that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    // Debian's rustc with a prebuilt `core` for bpfel-unknown-none (docs/design.md).
    ("rustc-web", "/usr/bin/rustc"),
    (
        "libstd-rust-web-dev-bpf",
        "/usr/lib/rustlib/bpfel-unknown-none",
    ),
    // LLVM 22 for bpf-linker.
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    ("zlib1g-dev", "/usr/include/zlib.h"),
    ("libzstd-dev", "/usr/include/zstd.h"),
    // Tests and benchmarks.
    ("bpftool", "/usr/sbin/bpftool"),
    ("iproute2", "/sbin/ip"),
    ("curl", "/usr/bin/curl"),
    ("redis-server", "/usr/bin/redis-server"),
    ("redis-tools", "/usr/bin/redis-benchmark"),
    ("postgresql", "/usr/lib/postgresql"),
    ("nginx", "/usr/sbin/nginx"),
    ("prometheus", "/usr/bin/prometheus"),
    (
        "prometheus-node-exporter",
        "/usr/bin/prometheus-node-exporter",
    ),
    // The node_exporter test's Btrfs and XFS filesystems on loop devices.
    ("btrfs-progs", "/usr/sbin/mkfs.btrfs"),
    ("xfsprogs", "/usr/sbin/mkfs.xfs"),
    ("wrk", "/usr/bin/wrk"),
    ("nghttp2-client", "/usr/bin/h2load"),
    // The network tests switch veth offloads off; the network benchmark's bulk transfer.
    ("ethtool", "/usr/sbin/ethtool"),
    ("iperf3", "/usr/bin/iperf3"),
    // The network test's stand-in for kube-proxy's Service DNAT.
    ("iptables", "/usr/sbin/iptables"),
    // The second-kernel tests (test-kernels): the emulator, and objcopy to strip the
    // agent's debug info before it goes into the guest's initramfs.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("binutils", "/usr/bin/objcopy"),
    // bench cost: no-op programs on the agent's hooks, the floor its numbers stand on.
    ("bpftrace", "/usr/bin/bpftrace"),
    // bench soak: the plot of the agent's RSS and CPU over time.
    ("gnuplot-nox", "/usr/bin/gnuplot"),
    // The endpoint security test: certificates, and bcrypt hashes as users make them.
    ("openssl", "/usr/bin/openssl"),
    ("apache2-utils", "/usr/bin/htpasswd"),
    // dist: the OCI image (buildah), and the dist test's look inside it and the .rpm.
    ("buildah", "/usr/bin/buildah"),
    ("umoci", "/usr/bin/umoci"),
    ("rpm", "/usr/bin/rpm"),
    // dist's arm64 binary: the dist test runs its --version under qemu-user with
    // Debian's arm64 glibc as the sysroot (/usr/aarch64-linux-gnu).
    ("qemu-user", "/usr/bin/qemu-aarch64"),
    (
        "libc6-arm64-cross",
        "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
    ),
];

/// Cargo subcommands `cargo xtask dist` packages with: (crate, version), installed with
/// `cargo install --locked`.
const CARGO_TOOLS: &[(&str, &str)] = &[("cargo-deb", "3.8.0"), ("cargo-generate-rpm", "0.21.1")];

/// Tools from PyPI that ship a binary: zig as the linker that targets glibc 2.17's
/// symbol versions, and the cargo subcommand that drives it.
const PYTHON_TOOLS: &[(&str, &str)] = &[("ziglang", "0.17.1"), ("cargo-zigbuild", "0.24.1")];

/// Python packages for the tests' real peers, with a module that shows each is there.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("grpcio", "grpc"),
    ("redis", "redis"),
    ("psycopg[binary]", "psycopg"),
    // The secrets test's HTTP/1.1 and h2c client.
    ("httpx[http2]", "h2"),
    // The spans test's stand-in OTLP receiver: the published OTLP protobuf definitions
    // (with their gRPC service stubs; grpcio is above).
    (
        "opentelemetry-proto",
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn setup() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, marker)| !Path::new(marker).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        require_root("setup installs Debian packages")?;
        eprintln!("xtask: installing {}", missing.join(" "));
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    for (package, module) in PYTHON_PACKAGES {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            run_cmd(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    for (package, version) in PYTHON_TOOLS {
        let present = Command::new("python3")
            .args(["-m", "pip", "show", package])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&format!("Version: {version}"))
            });
        if !present {
            run_cmd(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                &format!("{package}=={version}"),
            ]))?;
        }
    }
    for (krate, version) in CARGO_TOOLS {
        let subcommand = krate.trim_start_matches("cargo-");
        let present = Command::new("cargo")
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
        if !present {
            run_cmd(Command::new("cargo").args([
                "install",
                "--locked",
                krate,
                "--version",
                version,
            ]))?;
        }
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run_cmd(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
                .env("PATH", path),
        )?;
    }
    // dist cross-links an arm64 binary: rustup's prebuilt standard library for it
    // (zig, above, is the linker and C compiler).
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("run rustup")?;
    if !String::from_utf8_lossy(&targets.stdout).contains(dist::ARM64_TRIPLE) {
        run_cmd(Command::new("rustup").args(["target", "add", dist::ARM64_TRIPLE]))?;
    }
    fuzz::setup()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// Builds the release binary (build.rs builds and embeds the eBPF object).
fn build() -> Result<PathBuf> {
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "nodetap",
    ]))?;
    Ok(root().join("target/release/nodetap"))
}

fn test() -> Result<()> {
    setup()?;
    require_root("the integration tests load eBPF programs")?;
    let root = root();
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    run_cmd(
        Command::new("cargo")
            .current_dir(root.join("agent-ebpf"))
            .args(["fmt", "--", "--check"]),
    )?;
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let bin = build()?;
    // Release artifacts, which tests/tests/dist.rs inspects.
    dist::run(&root)?;
    // Every fuzz target briefly under AFL++ (the long runs are in BENCHMARKS.md).
    let smoke = fuzz::Budget {
        seconds: Some(fuzz::SMOKE_SECONDS),
        executions: None,
    };
    fuzz::check(&root, &fuzz::run(&root, "all", smoke, 1)?)?;
    // Unit tests and the integration suite in the socket tier (this kernel has it)...
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--release", "--workspace"])
            .env("NODETAP_BIN", &bin)
            .env("NODETAP_CAPTURE_MODE", "socket"),
    )?;
    // ...the integration suite again in the syscall tier (older kernels, e.g. EKS 6.1)...
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--release", "--package", "nodetap-tests", "--tests"])
            .env("NODETAP_BIN", &bin)
            .env("NODETAP_CAPTURE_MODE", "syscall"),
    )?;
    // ...and real kernels under qemu: 6.1 (EKS's floor), where auto mode must choose the
    // syscall tier, and 6.12 (bookworm-backports), where it must choose the socket tier.
    for package in [
        test_kernels::DEFAULT_PACKAGE,
        "linux-image-6.12-cloud-amd64",
    ] {
        test_kernels::run(&test_kernels::Options {
            package: package.to_owned(),
            timeout: std::time::Duration::from_secs(1800),
            smp: 2,
            capture_mode: None,
        })?;
    }
    Ok(())
}
