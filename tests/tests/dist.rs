//! What `cargo xtask dist` wrote to target/dist/ (issue 13): the binary's glibc symbol
//! versions, the .deb (installed for real, its unit verified by systemd-analyze, run as
//! its user), the .rpm's contents, and the OCI image's binary run from the unpacked
//! image. `cargo xtask test` runs `dist` before the tests; run it by hand otherwise.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use nodetap_tests::{run_ok, servers::TempDir, target_dir};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The oldest glibc the binary must load on (RHEL 7; Amazon Linux 2 has 2.26).
const GLIBC_FLOOR: (u32, u32) = (2, 17);

fn dist(name: &str) -> PathBuf {
    let path = target_dir().join("dist").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask dist` first",
        path.display()
    );
    path
}

/// Every `GLIBC_x.y` version the binary's dynamic symbols need (objdump -T).
fn glibc_versions(bin: &Path) -> Vec<(u32, u32)> {
    let text = run_ok(Command::new("objdump").arg("-T").arg(bin));
    let mut versions: Vec<(u32, u32)> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

#[test]
fn binary_needs_nothing_newer_than_glibc_2_17() {
    let bin = dist(&format!("nodetap-{VERSION}-x86_64-linux-gnu"));
    let versions = glibc_versions(&bin);
    assert!(
        !versions.is_empty(),
        "no GLIBC_ symbol versions read from {}",
        bin.display()
    );
    let newest = *versions.last().unwrap();
    assert!(
        newest <= GLIBC_FLOOR,
        "{} needs GLIBC_{}.{} (all: {versions:?}); the floor is {}.{}",
        bin.display(),
        newest.0,
        newest.1,
        GLIBC_FLOOR.0,
        GLIBC_FLOOR.1
    );
    // The host's own build needs 2.34: the check above is not vacuous.
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("nodetap {VERSION}"));
}

/// The arm64 (Graviton) binary: an aarch64 executable for the same glibc floor, which
/// runs (`--version`, `--help`) under qemu-user with Debian's arm64 glibc. Loading the
/// kernel programs cannot be tried here: qemu-user does not implement bpf(2) (ENOSYS).
#[test]
fn arm64_binary_is_aarch64_for_glibc_2_17_and_runs_under_qemu() {
    let bin = dist(&format!("nodetap-{VERSION}-aarch64-linux-gnu"));
    let header = std::fs::read(&bin).expect("read the arm64 binary");
    // ELF64, little-endian, e_machine EM_AARCH64 (183) at offset 18.
    assert_eq!(
        &header[..6],
        b"\x7fELF\x02\x01",
        "{} is not ELF64 LE",
        bin.display()
    );
    assert_eq!(
        u16::from_le_bytes([header[18], header[19]]),
        183,
        "{} is not aarch64",
        bin.display()
    );
    let versions = glibc_versions(&bin);
    assert!(
        !versions.is_empty(),
        "no GLIBC_ symbol versions read from {}",
        bin.display()
    );
    let newest = *versions.last().unwrap();
    assert!(
        newest <= GLIBC_FLOOR,
        "{} needs GLIBC_{}.{} (all: {versions:?})",
        bin.display(),
        newest.0,
        newest.1
    );
    let qemu = |arg: &str| {
        run_ok(
            Command::new("qemu-aarch64")
                .args(["-L", "/usr/aarch64-linux-gnu"])
                .arg(&bin)
                .arg(arg),
        )
    };
    assert_eq!(qemu("--version").trim(), format!("nodetap {VERSION}"));
    assert!(qemu("--help").contains("--capture-mode"));
}

#[test]
fn rpm_has_the_binary_unit_config_and_user() {
    let rpm = dist(&format!("nodetap-{VERSION}-1.x86_64.rpm"));
    let files = run_ok(Command::new("rpm").args(["-qpl"]).arg(&rpm));
    for path in [
        "/usr/bin/nodetap",
        "/usr/lib/systemd/system/nodetap.service",
        "/etc/nodetap/nodetap.toml",
    ] {
        assert!(
            files.lines().any(|l| l == path),
            "{path} not in the rpm:\n{files}"
        );
    }
    let config = run_ok(Command::new("rpm").args(["-qpc"]).arg(&rpm));
    assert!(
        config.contains("/etc/nodetap/nodetap.toml"),
        "config not marked: {config}"
    );
    let scripts = run_ok(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(
        scripts.contains("useradd -r -g nodetap"),
        "the rpm does not create the nodetap user:\n{scripts}"
    );
}

/// Removes the .deb even when an assertion fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "nodetap"]).output();
    }
}

#[test]
fn deb_installs_and_its_unit_verifies() {
    nodetap_tests::ensure_root();
    let deb = dist(&format!("nodetap_{VERSION}-1_amd64.deb"));
    let depends = run_ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"),
    );
    assert_eq!(depends.trim(), "adduser, libc6 (>= 2.17)", "Depends");
    let _installed = Installed;
    run_ok(
        Command::new("dpkg")
            .args(["-i"])
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    let id = run_ok(Command::new("id").arg("nodetap"));
    assert!(
        id.contains("(nodetap)"),
        "no nodetap user after install: {id}"
    );
    let conffiles =
        run_ok(Command::new("dpkg-query").args(["--showformat=${Conffiles}", "-W", "nodetap"]));
    assert!(
        conffiles.contains("/etc/nodetap/nodetap.toml"),
        "conffiles: {conffiles}"
    );
    let unit = "/usr/lib/systemd/system/nodetap.service";
    assert!(Path::new(unit).exists(), "{unit} not installed");
    // systemd-analyze verify checks the unit's syntax, that ExecStart exists and is
    // executable, and the sandboxing options; it prints nothing when all is well.
    let out = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{said}"
    );
    // The installed binary reads the installed config and passes its start-up checks
    // as the unit's user with the unit's capabilities.
    let installed_unit = std::fs::read_to_string(unit).unwrap();
    let caps = installed_unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit sets AmbientCapabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("setpriv")
        .args([
            "--reuid=nodetap",
            "--regid=nodetap",
            "--clear-groups",
            "--no-new-privs",
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps={caps}"),
            "/usr/bin/nodetap",
            "--config",
            "/etc/nodetap/nodetap.toml",
            "--check",
        ])
        .output()
        .expect("setpriv");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.contains("all required hooks attached"),
        "the installed agent as the nodetap user: {}\n{report}",
        out.status
    );
}

#[test]
fn oci_image_runs_its_binary() {
    nodetap_tests::ensure_root();
    let archive = dist(&format!("nodetap-{VERSION}-oci.tar"));
    let dir = TempDir::new("nodetap-oci");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir.0),
    );
    let bundle = dir.0.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:nodetap:{VERSION}", dir.0.display()))
            .arg(&bundle),
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .expect("runtime config");
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/usr/bin/nodetap", "--config", "/etc/nodetap/nodetap.toml"]),
        "the image's entrypoint and command"
    );
    // The image holds only what the binary needs: it runs from the image's own files.
    let rootfs = bundle.join("rootfs");
    let version = run_ok(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/bin/nodetap", "--version"]),
    );
    assert_eq!(version.trim(), format!("nodetap {VERSION}"));
    assert!(
        !rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists(),
        "the image has a shell: it should hold only the agent"
    );

    // And the image in a container (buildah, chroot isolation) as the DaemonSet runs
    // it: its capability set, seccomp unconfined (a runtime's default profile denies
    // bpf(2)), the host's tracefs and cgroup tree mounted: every hook attaches.
    let daemonset = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap();
    let caps = [
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
    ];
    assert!(
        daemonset.contains(&format!("add: [{}]", caps.join(", "))),
        "the DaemonSet's capabilities changed: update this test"
    );
    let name = format!("nodetap-dist-test-{}", std::process::id());
    let _container = Container(name.clone());
    run_ok(
        Command::new("buildah")
            .args(["--storage-driver", "vfs", "from", "--security-opt"])
            .args(["seccomp=unconfined", "--name", &name])
            .arg(format!("oci-archive:{}", archive.display())),
    );
    let mut run = Command::new("buildah");
    run.args(["--storage-driver", "vfs", "run", "--isolation", "chroot"]);
    for cap in caps {
        run.args(["--cap-add", &format!("CAP_{cap}")]);
    }
    run.args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing"])
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
        .args([&name, "--", "/usr/bin/nodetap", "--check"]);
    let out = run.output().expect("buildah run");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.contains("all required hooks attached"),
        "the image in a container with the DaemonSet's capabilities: {}\n{report}",
        out.status
    );
}

/// A buildah working container, removed even when an assertion fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["--storage-driver", "vfs", "rm", &self.0])
            .output();
    }
}
