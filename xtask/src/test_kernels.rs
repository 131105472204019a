//! `cargo xtask test-kernels`: the agent on a second kernel, under qemu.
//!
//! EKS nodes run kernel 6.1 (Amazon Linux 2023), below the socket capture tier's 6.3
//! floor; the build machines run a newer kernel. This task boots Debian's 6.1 cloud
//! kernel (BTF and kprobes on) under plain emulation (TCG: the KVM guest hangs at boot
//! on the build machines, see docs/design.md) with an initramfs holding the release agent,
//! the test programs and `guest_init` (tests/src/bin/guest_init.rs), which runs the
//! checks and prints one `NODETAP-TEST <name> PASS|FAIL <detail>` line each.
//! Nothing is installed on the host: the kernel package is downloaded and unpacked
//! under target/kernels/. See docs/kernels.md.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where downloaded kernels, the initramfs and console logs live.
fn cache_dir() -> PathBuf {
    super::root().join("target/kernels")
}

/// A real Redis server for the guest (setup installs Debian's redis-server).
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Debian's cloud kernel meta-package: 6.1 in bookworm, the EKS floor.
pub const DEFAULT_PACKAGE: &str = "linux-image-cloud-amd64";

pub struct Options {
    pub package: String,
    pub timeout: Duration,
    pub smp: u32,
    /// Passed to the guest's agent as `--capture-mode` (auto when absent).
    pub capture_mode: Option<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    super::setup()?;
    let nodetap = super::build()?;
    let bins = build_guest_programs()?;
    let kernel = fetch_kernel(&opts.package)?;
    eprintln!("xtask: kernel {}", kernel.display());
    let initramfs = build_initramfs(&nodetap, &bins)?;
    let built = started.elapsed();
    let booted = Instant::now();
    let console = kernel
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&cache_dir())
        .join("console.log");
    let outcome = boot(&kernel, &initramfs, &console, opts)?;
    let boot_time = booted.elapsed();
    report(&outcome, built, boot_time, started.elapsed())
}

/// `guest_init` and `tcpgen`, release builds of the tests crate.
fn build_guest_programs() -> Result<Vec<(String, PathBuf)>> {
    let root = super::root();
    super::run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "nodetap-tests",
        "--bin",
        "guest_init",
        "--bin",
        "tcpgen",
    ]))?;
    let release = root.join("target/release");
    Ok(vec![
        ("init".into(), release.join("guest_init")),
        ("bin/tcpgen".into(), release.join("tcpgen")),
    ])
}

/// The versioned image package a meta-package depends on, if apt knows it.
fn image_behind(meta: &str) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["depends", meta])
        .output()
        .context("cannot run apt-cache (this task needs Debian's apt)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned))
}

/// Resolves the versioned image package behind a meta-package (e.g.
/// linux-image-cloud-amd64 -> linux-image-6.1.0-57-cloud-amd64); a name apt knows
/// that depends on no other image is used as it is.
fn resolve_package(name: &str) -> Result<String> {
    let known = |name: &str| {
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !known(name) {
        super::run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        if !known(name) {
            bail!("apt knows no package {name}: list kernel images with `apt-cache search --names-only '^linux-image-'`");
        }
    }
    Ok(image_behind(name)?.unwrap_or_else(|| name.to_owned()))
}

/// Downloads the kernel package and keeps its boot/ (vmlinuz, config, System.map),
/// once per package version; returns the vmlinuz path. No modules: the guest needs
/// none (serial console and loopback only; the cloud kernel builds both in).
fn fetch_kernel(meta: &str) -> Result<PathBuf> {
    let package = resolve_package(meta)?;
    let dir = cache_dir().join(&package);
    if let Some(vmlinuz) = find_vmlinuz(&dir) {
        return Ok(vmlinuz);
    }
    let work = dir.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let download = || {
        super::run_cmd(
            Command::new("apt-get")
                .current_dir(&work)
                // The download goes into target/, which apt's sandbox user cannot write.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", &package]),
        )
    };
    if download().is_err() {
        // The archive moved on since apt's lists were fetched.
        super::run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        download().with_context(|| format!("cannot download {package} with apt-get"))?;
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let unpacked = work.join("root");
    super::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let _ = fs::remove_dir_all(dir.join("boot"));
    fs::rename(unpacked.join("boot"), dir.join("boot")).with_context(|| {
        format!("{package} holds no boot/ directory: is it a kernel image package?")
    })?;
    fs::remove_dir_all(&work)?;
    find_vmlinuz(&dir).with_context(|| {
        format!("{package} holds no boot/vmlinuz-*: is it a kernel image package?")
    })
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// Builds target/kernels/initramfs.cpio.gz: `/init` (guest_init), the agent (debug info
/// stripped: it is most of the binary's size), the test programs, redis-server, and the
/// shared libraries they load, at the paths the dynamic loader searches.
fn build_initramfs(nodetap: &Path, bins: &[(String, PathBuf)]) -> Result<PathBuf> {
    let dir = cache_dir();
    fs::create_dir_all(&dir)?;
    let stripped = dir.join("nodetap");
    super::run_cmd(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(nodetap)
            .arg(&stripped),
    )?;
    let mut files: Vec<(String, PathBuf)> = bins.to_vec();
    files.push(("bin/nodetap".into(), stripped));
    if !Path::new(REDIS_SERVER).exists() {
        bail!("{REDIS_SERVER} is missing: `cargo xtask setup` installs Debian's redis-server");
    }
    files.push(("bin/redis-server".into(), REDIS_SERVER.into()));
    let mut libs = BTreeSet::new();
    for (_, host) in &files {
        libs.extend(shared_libraries(host)?);
    }
    for lib in libs {
        files.push((lib.trim_start_matches('/').to_owned(), PathBuf::from(&lib)));
    }

    let mut cpio = Cpio::default();
    for d in ["dev", "proc", "sys", "tmp", "bin", "root"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_device("dev/console", 5, 1);
    for (guest, host) in &files {
        let data = fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
        cpio.file(guest, &data, 0o755);
    }
    let raw = cpio.finish();
    let out = dir.join("initramfs.cpio.gz");
    let mut gzip = Command::new("gzip")
        .args(["-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out)?)
        .spawn()
        .context("cannot run gzip")?;
    let mut stdin = gzip.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&raw));
    let status = gzip.wait()?;
    writer.join().expect("gzip writer thread")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    eprintln!(
        "xtask: initramfs {} ({} files, {:.1} MB)",
        out.display(),
        files.len(),
        fs::metadata(&out)?.len() as f64 / 1e6
    );
    Ok(out)
}

/// The shared libraries `ldd` says a program loads (absolute paths, loader included).
fn shared_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {}", bin.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_owned());
        }
    }
    Ok(libs)
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    next_inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_inode += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    /// A directory and its parents, each once.
    fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if self.dirs.insert(at.clone()) {
                self.entry(&at.clone(), 0o040_755, (0, 0), &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn file(&mut self, path: &str, data: &[u8], perm: u32) {
        self.parent(path);
        self.entry(path, 0o100_000 | perm, (0, 0), data);
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, 0o020_600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

struct Outcome {
    results: Vec<(String, String, String)>,
    done: bool,
    console: PathBuf,
}

/// Boots the kernel with the initramfs, streams the console, and collects result lines
/// until the guest powers off or the timeout passes.
fn boot(kernel: &Path, initramfs: &Path, console: &Path, opts: &Options) -> Result<Outcome> {
    let mut log = fs::File::create(console)
        .with_context(|| format!("cannot create {}", console.display()))?;
    let mut cmdline = String::from("console=ttyS0 panic=-1 loglevel=4");
    if let Some(mode) = &opts.capture_mode {
        // Read by guest_init from /proc/cmdline; the kernel ignores it.
        cmdline.push_str(&format!(" nodetap.capture_mode={mode}"));
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    // TCG, not KVM: a KVM guest hangs at boot on the build machines (docs/design.md).
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1G"])
        .args(["-smp", &opts.smp.to_string()])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1 reboots at once on a panic, and -no-reboot turns that into an exit;
        // loglevel=4 keeps the kernel's warnings (and errors) on the console, not its
        // boot chatter.
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut qemu = cmd
        .spawn()
        .context("cannot run qemu-system-x86_64 (Debian package qemu-system-x86; `cargo xtask setup` installs it)")?;
    let stdout = qemu.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + opts.timeout;
    let started = Instant::now();
    let mut outcome = Outcome {
        results: Vec::new(),
        done: false,
        console: console.to_path_buf(),
    };
    let mut tail: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("guest {:>6.1}s | {line}", started.elapsed().as_secs_f64());
                if let Some(rest) = line.strip_prefix("NODETAP-TEST ") {
                    let mut parts = rest.splitn(3, ' ');
                    let name = parts.next().unwrap_or("?").to_owned();
                    let verdict = parts.next().unwrap_or("?").to_owned();
                    let detail = parts.next().unwrap_or("").to_owned();
                    outcome.results.push((name, verdict, detail));
                } else if line.starts_with("NODETAP-TESTS-DONE") {
                    outcome.done = true;
                }
                tail.push(line);
                if tail.len() > 60 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                bail!(
                    "the guest did not finish within {} s (raise it with --timeout); console tail:\n{}\n(full console: {})",
                    opts.timeout.as_secs(),
                    shown(&tail),
                    console.display()
                );
            }
        }
    }
    let status = qemu.wait()?;
    if !outcome.done {
        bail!(
            "the guest stopped before finishing its checks (qemu: {status}); console tail:\n{}\n(full console: {})",
            shown(&tail),
            console.display()
        );
    }
    Ok(outcome)
}

fn shown(tail: &[String]) -> String {
    if tail.is_empty() {
        "(the guest printed nothing)".into()
    } else {
        tail.join("\n")
    }
}

fn report(outcome: &Outcome, built: Duration, booted: Duration, total: Duration) -> Result<()> {
    println!();
    println!("test-kernels results:");
    for (name, verdict, detail) in &outcome.results {
        println!("  {verdict:<4} {name:<20} {detail}");
    }
    println!(
        "test-kernels time: {:.0} s total (setup and build {:.0} s, guest {:.0} s); console: {}",
        total.as_secs_f64(),
        built.as_secs_f64(),
        booted.as_secs_f64(),
        outcome.console.display()
    );
    let failed: Vec<&str> = outcome
        .results
        .iter()
        .filter(|(_, verdict, _)| verdict != "PASS")
        .map(|(name, _, _)| name.as_str())
        .collect();
    if outcome.results.is_empty() {
        bail!("the guest reported no checks");
    }
    if !failed.is_empty() {
        bail!("on the second kernel, failed: {}", failed.join(", "));
    }
    Ok(())
}
