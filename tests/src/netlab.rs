//! A small network lab for the network-counter tests: a "node" router namespace and
//! "pod" namespaces joined to it by veth pairs, each pod's processes in a kubelet-style
//! cgroup of the lab's own cgroup tree. Everything is removed on drop, also when a test
//! panics.
//!
//! The wire is kept silent except for the test's own traffic, so that the veth counters
//! are an exact reference: IPv6 is disabled in every namespace (no router solicitations,
//! MLD or DAD), ARP is off with static neighbour entries both ways, and segmentation and
//! receive offloads are off on both veth ends (one counted frame per wire packet, also
//! through the router). veth does not pad frames, so IP bytes = bytes − 14 × packets.
//!
//! Each pod namespace is created by a process that first moved itself into the pod's
//! cgroup, so sockets the kernel creates per namespace belong to the pod's cgroup. Note
//! that on current kernels TCP's RST / TIME_WAIT-ACK socket and ICMP's socket are global
//! per-CPU sockets rather than per-namespace ones, so a test that wants every packet
//! attributed to a pod should avoid them (netxfer does: each side's packets come from its
//! own full socket).

use std::{
    ffi::{CString, OsStr},
    io,
    net::Ipv4Addr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{ensure_root, unique_name};

/// Where the cgroup2 hierarchy is mounted (from /proc/self/mountinfo), e.g.
/// /sys/fs/cgroup on a unified host or /sys/fs/cgroup/unified on a hybrid one.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    info.lines()
        .find_map(|line| {
            // fields… " - " fstype source options
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(unescape_mountinfo)
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok());
        if b[i] == b'\\' {
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Runs `cmd`, returning its stdout; Err with the command and its stderr on failure.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("{e}"))
}

/// Makes the child move itself into `cgroup` before it execs (writing 0 to cgroup.procs
/// moves the writer). Nothing is allocated after fork.
fn enter_cgroup(cmd: &mut Command, cgroup: &Path) {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .expect("cgroup path without NUL");
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let ret = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if ret != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// A cgroup of the lab.
#[derive(Clone, Debug)]
pub struct LabCgroup {
    /// The directory, under the cgroup2 mount.
    pub path: PathBuf,
    /// The cgroup id: the directory's inode number (what bpf_skb_cgroup_id and
    /// bpf_get_current_cgroup_id return).
    pub id: u64,
    /// The path as /proc/<pid>/cgroup shows it ("/nodetap-test-…/kubepods.slice/…").
    pub hierarchy_path: String,
}

impl LabCgroup {
    /// `program` run inside this cgroup, in the host's network namespace (add its
    /// arguments to the returned command).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter_cgroup(&mut cmd, &self.path);
        cmd
    }

    /// The pids in this cgroup (not its descendants).
    pub fn procs(&self) -> Vec<i32> {
        read_procs(&self.path)
    }
}

fn read_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A cgroup directory and all directories below it, deepest first.
fn cgroup_tree_bottom_up(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree_bottom_up(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Interface counters of a veth end (from the kernel's rtnl_link_stats64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

/// The cgroup path (relative to a lab's root) the kubelet's systemd driver gives a
/// containerd container of a Burstable pod: `kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<uid, '_' for '-'>.slice/cri-containerd-<id>.scope`.
pub fn kubelet_cgroup(pod_uid: &str, container_id: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
        pod_uid.replace('-', "_"),
    )
}

/// Ethernet header length; veth frames carry no FCS and no padding.
pub const ETH_HLEN: u64 = 14;

impl VethCounters {
    /// IP bytes sent: frame bytes minus one Ethernet header per packet.
    pub fn tx_ip_bytes(&self) -> u64 {
        self.tx_bytes - ETH_HLEN * self.tx_packets
    }

    /// IP bytes received.
    pub fn rx_ip_bytes(&self) -> u64 {
        self.rx_bytes - ETH_HLEN * self.rx_packets
    }

    /// What changed since `before` (panics if a counter went backwards).
    pub fn since(&self, before: &VethCounters) -> VethCounters {
        let d = |a: u64, b: u64, what: &str| {
            a.checked_sub(b)
                .unwrap_or_else(|| panic!("{what} went backwards: {b} -> {a}"))
        };
        VethCounters {
            tx_bytes: d(self.tx_bytes, before.tx_bytes, "tx_bytes"),
            tx_packets: d(self.tx_packets, before.tx_packets, "tx_packets"),
            rx_bytes: d(self.rx_bytes, before.rx_bytes, "rx_bytes"),
            rx_packets: d(self.rx_packets, before.rx_packets, "rx_packets"),
        }
    }
}

impl std::ops::Add for VethCounters {
    type Output = VethCounters;
    fn add(self, o: VethCounters) -> VethCounters {
        VethCounters {
            tx_bytes: self.tx_bytes + o.tx_bytes,
            tx_packets: self.tx_packets + o.tx_packets,
            rx_bytes: self.rx_bytes + o.rx_bytes,
            rx_packets: self.rx_packets + o.rx_packets,
        }
    }
}

/// Counters of `dev` in namespace `netns`.
fn link_counters(netns: &str, dev: &str) -> VethCounters {
    let out = ip(&["-n", netns, "-s", "-j", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`ip -s -j link show` output is not JSON ({e}): {out}"));
    let stats = &json[0]["stats64"];
    let get = |dir: &str, what: &str| {
        stats[dir][what]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats64.{dir}.{what} for {dev} in {netns}: {out}"))
    };
    VethCounters {
        tx_bytes: get("tx", "bytes"),
        tx_packets: get("tx", "packets"),
        rx_bytes: get("rx", "bytes"),
        rx_packets: get("rx", "packets"),
    }
}

/// A pod: its network namespace, with `eth0` addressed `addr` and a default route via
/// `gateway` on the router, and the cgroup its processes run in.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub cgroup: LabCgroup,
    /// The router namespace and the name of the pod link's router end there.
    pub router_netns: String,
    pub router_dev: String,
}

impl PodNet {
    /// Counters of the pod's eth0.
    pub fn counters(&self) -> VethCounters {
        link_counters(&self.netns, "eth0")
    }

    /// Counters of the router end of the pod's link (its tx is what the pod received).
    pub fn router_counters(&self) -> VethCounters {
        link_counters(&self.router_netns, &self.router_dev)
    }

    /// `program` run inside the pod's network namespace and cgroup (add its arguments
    /// to the returned command). The process keeps its pid through `ip netns exec`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        enter_cgroup(&mut cmd, &self.cgroup.path);
        cmd
    }

    /// Waits until a TCP socket listens on `port` in the pod (asked over netlink, so no
    /// packet is sent); panics after `timeout`.
    pub fn wait_listening(&self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = ip(&[
                "netns",
                "exec",
                &self.netns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ]);
            if !out.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listened on port {port} in pod {} within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The lab: a router namespace, pods, and a cgroup tree, all removed on drop.
pub struct NetLab {
    /// The unique part of every name the lab creates.
    pub suffix: String,
    /// The lab's cgroup root: `<cgroup2 mount>/nodetap-test-<suffix>`.
    pub cgroup_root: PathBuf,
    mount: PathBuf,
    router: String,
    /// Namespaces created so far (router first).
    netns: Mutex<Vec<String>>,
    next_link: Mutex<u32>,
}

impl NetLab {
    /// Creates the lab's cgroup root and router namespace (forwarding on, IPv6 off).
    /// `tag` is a short alphanumeric word that goes into every name.
    pub fn new(tag: &str) -> NetLab {
        ensure_root();
        assert!(
            tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "lab tag must be alphanumeric: {tag:?}"
        );
        let suffix = unique_name(tag);
        let mount = cgroup2_mount();
        let cgroup_root = mount.join(format!("nodetap-test-{suffix}"));
        std::fs::create_dir(&cgroup_root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", cgroup_root.display()));
        let lab = NetLab {
            router: format!("ntr-{suffix}"),
            suffix,
            cgroup_root,
            mount,
            netns: Mutex::new(Vec::new()),
            next_link: Mutex::new(0),
        };
        lab.create_netns(&lab.router, &lab.cgroup_root.clone());
        lab.sysctl(
            &lab.router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        );
        ip(&["-n", &lab.router, "link", "set", "dev", "lo", "up"]);
        lab
    }

    /// The router ("node") namespace.
    pub fn router_netns(&self) -> &str {
        &self.router
    }

    /// `program` run in the router namespace, in the lab's root cgroup (so drop kills
    /// whatever is left of it).
    pub fn router_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.router]).arg(program);
        enter_cgroup(&mut cmd, &self.cgroup_root);
        cmd
    }

    /// Runs a shell script in the router namespace; returns its stdout, panics with its
    /// stderr on failure.
    pub fn router_sh(&self, script: &str) -> String {
        run(self.router_command("sh").args(["-c", script])).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates (if needed) the cgroup `rel` (slash-separated, nested directories) under
    /// the lab's root, e.g. `kubepods.slice/kubepods-besteffort.slice/…/cri-containerd-<id>.scope`.
    pub fn cgroup(&self, rel: &str) -> LabCgroup {
        let rel = rel.trim_matches('/');
        assert!(
            !rel.is_empty()
                && !rel
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == ".."),
            "bad cgroup path {rel:?}"
        );
        let path = self.cgroup_root.join(rel);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        let id = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino();
        let hierarchy_path = format!(
            "/{}",
            path.strip_prefix(&self.mount)
                .expect("lab cgroups live under the mount")
                .display()
        );
        LabCgroup {
            path,
            id,
            hierarchy_path,
        }
    }

    /// Creates the pod `name` (alphanumeric, `-`, `_`): its namespace, created from
    /// inside `cgroup`; a veth pair with `eth0` in the pod and its other end in the
    /// router; `pod_addr/prefix_len` on eth0 and `gateway/prefix_len` on the router
    /// end; a default route via the gateway; static neighbours both ways, ARP and
    /// offloads off on both ends.
    pub fn add_pod(
        &self,
        name: &str,
        pod_addr: Ipv4Addr,
        gateway: Ipv4Addr,
        prefix_len: u8,
        cgroup: &LabCgroup,
    ) -> PodNet {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "bad pod name {name:?}"
        );
        assert!(
            prefix_len <= 30,
            "prefix /{prefix_len} leaves no room for two hosts"
        );
        let netns = format!("ntp-{}-{name}", self.suffix);
        let router_dev = {
            let mut n = self.next_link.lock().unwrap();
            *n += 1;
            let mut dev = format!("v{}-{name}", *n);
            dev.truncate(15);
            dev
        };
        self.create_netns(&netns, &cgroup.path);
        let r = self.router.as_str();
        let p = netns.as_str();
        let [a, b, c, d] = pod_addr.octets();
        let pod_mac = format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        let router_mac = format!("02:01:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        let rd = router_dev.as_str();
        ip(&[
            "-n", r, "link", "add", "name", rd, "type", "veth", "peer", "name", "eth0", "netns", p,
        ]);
        ip(&[
            "-n",
            r,
            "link",
            "set",
            "dev",
            rd,
            "address",
            &router_mac,
            "arp",
            "off",
        ]);
        ip(&[
            "-n", p, "link", "set", "dev", "eth0", "address", &pod_mac, "arp", "off",
        ]);
        self.offloads_off(r, rd);
        self.offloads_off(p, "eth0");
        let gw_cidr = format!("{gateway}/{prefix_len}");
        let pod_cidr = format!("{pod_addr}/{prefix_len}");
        ip(&["-n", r, "addr", "add", &gw_cidr, "dev", rd]);
        ip(&["-n", p, "addr", "add", &pod_cidr, "dev", "eth0"]);
        let (gw, pa) = (gateway.to_string(), pod_addr.to_string());
        ip(&[
            "-n",
            r,
            "neigh",
            "replace",
            &pa,
            "lladdr",
            &pod_mac,
            "dev",
            rd,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            p,
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &router_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&["-n", p, "link", "set", "dev", "lo", "up"]);
        ip(&["-n", r, "link", "set", "dev", rd, "up"]);
        ip(&["-n", p, "link", "set", "dev", "eth0", "up"]);
        ip(&[
            "-n", p, "route", "add", "default", "via", &gw, "dev", "eth0",
        ]);
        PodNet {
            name: name.to_owned(),
            netns,
            addr: pod_addr,
            gateway,
            prefix_len,
            cgroup: cgroup.clone(),
            router_netns: self.router.clone(),
            router_dev,
        }
    }

    /// Waits until none of `pods`' counters has changed for `quiet` (traffic through the
    /// router lands a little after the sender's counters move); panics after `timeout`.
    pub fn wait_quiet(&self, pods: &[&PodNet], quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let read = || pods.iter().map(|p| p.counters()).collect::<Vec<_>>();
        let mut last = read();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(25));
            let now = read();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod counters still changing after {timeout:?}: {last:?}"
            );
        }
    }

    /// `ip netns add`, run by a process that first joined `cgroup`; IPv6 off before any
    /// link comes up.
    fn create_netns(&self, name: &str, cgroup: &Path) {
        // Recorded first: a half-made namespace must still be deleted.
        self.netns.lock().unwrap().push(name.to_owned());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "add", name]);
        enter_cgroup(&mut cmd, cgroup);
        run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
        self.sysctl(
            name,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }

    fn sysctl(&self, netns: &str, settings: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "sysctl", "-q", "-w"])
            .args(settings);
        run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    }

    fn offloads_off(&self, netns: &str, dev: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "ethtool", "-K", dev])
            .args([
                "tso",
                "off",
                "gso",
                "off",
                "gro",
                "off",
                "tx-udp-segmentation",
                "off",
                "tx-gso-list",
                "off",
                "rx-gro-list",
                "off",
                "rx-udp-gro-forwarding",
                "off",
            ]);
        run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGKILLs everything in the lab's cgroups and waits until they are empty.
    fn kill_all(&self) -> Result<(), String> {
        let mut dirs = Vec::new();
        cgroup_tree_bottom_up(&self.cgroup_root, &mut dirs);
        // cgroup.kill (5.14+) kills the whole subtree, also processes forking meanwhile.
        let _ = std::fs::write(self.cgroup_root.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = dirs.iter().flat_map(|d| read_procs(d)).collect();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("processes still in the lab's cgroups: {pids:?}"));
            }
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if let Err(e) = self.kill_all() {
            problems.push(e);
        }
        let netns = std::mem::take(&mut *self.netns.lock().unwrap_or_else(|e| e.into_inner()));
        // Pods first, the router last; veth pairs go with their namespaces.
        for ns in netns.iter().rev() {
            // Processes put into the namespace some other way than through the lab.
            if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", ns])) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                if Path::new("/run/netns").join(ns).exists() {
                    problems.push(e);
                }
            }
        }
        let mut dirs = Vec::new();
        cgroup_tree_bottom_up(&self.cgroup_root, &mut dirs);
        for dir in dirs {
            // A killed task leaves its cgroup a moment after it is gone from cgroup.procs.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        problems.push(format!("cannot remove cgroup {}: {e}", dir.display()));
                        break;
                    }
                }
            }
        }
        if !problems.is_empty() {
            eprintln!(
                "netlab {}: incomplete cleanup:\n  {}",
                self.suffix,
                problems.join("\n  ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{helper_bin, ChildGuard};

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(
            unescape_mountinfo("/sys/fs/cgroup/a\\040b\\134c"),
            PathBuf::from("/sys/fs/cgroup/a b\\c")
        );
        assert_eq!(unescape_mountinfo("/x\\04"), PathBuf::from("/x\\04"));
    }

    /// The netxfer helper. `cargo test --lib` builds no binaries (a run with the
    /// integration tests does), so build it here when missing, with the cargo that runs
    /// this test and the same profile and target directory.
    fn netxfer() -> PathBuf {
        static BUILD: std::sync::Once = std::sync::Once::new();
        BUILD.call_once(|| {
            let exe = std::env::current_exe().expect("current exe");
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
            if profile_dir.join("netxfer").exists() {
                return;
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "nodetap-tests", "--bin", "netxfer"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env(
                    "CARGO_TARGET_DIR",
                    profile_dir.parent().expect("target dir"),
                );
            if profile_dir.file_name() == Some(OsStr::new("release")) {
                cmd.arg("--release");
            }
            run(&mut cmd).unwrap_or_else(|e| panic!("building netxfer: {e}"));
        });
        helper_bin("netxfer")
    }

    fn pod_cgroup(lab: &NetLab, uid: &str, container: char) -> LabCgroup {
        lab.cgroup(&kubelet_cgroup(uid, &container.to_string().repeat(64)))
    }

    fn json_line(out: &[u8], what: &str) -> serde_json::Value {
        let text = String::from_utf8_lossy(out);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{what} printed no JSON line ({e}): {text:?}"))
    }

    /// Starts `netxfer serve` for one connection in `pod` and waits until it listens.
    fn serve(pod: &PodNet, port: u16) -> ChildGuard {
        let mut cmd = pod.command(netxfer());
        cmd.args(["serve", &pod.addr.to_string(), &port.to_string(), "1"])
            .stdout(Stdio::piped());
        let server = ChildGuard::spawn(cmd);
        pod.wait_listening(port, Duration::from_secs(10));
        server
    }

    fn send(from: &PodNet, to: &PodNet, port: u16, bytes: u64, api: &str) {
        let out = from
            .command(netxfer())
            .args(["send", &to.addr.to_string(), &port.to_string()])
            .args([&bytes.to_string(), api])
            .output()
            .expect("run netxfer send");
        assert!(
            out.status.success(),
            "netxfer send {api} from {} to {} failed: {}",
            from.name,
            to.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json_line(&out.stdout, "netxfer send");
        assert_eq!(v["sent"], bytes, "netxfer send {api}: {v}");
        assert_eq!(v["acked"], bytes, "netxfer send {api}: {v}");
    }

    fn server_received(mut server: ChildGuard, pod: &PodNet) -> serde_json::Value {
        let code = server.wait_timeout(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "netxfer serve in {} did not exit cleanly",
            pod.name
        );
        let mut out = Vec::new();
        io::Read::read_to_end(server.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        json_line(&out, "netxfer serve")["received"].clone()
    }

    /// Pod A sends 1 MB with write(2) to B (through the router, another subnet) and
    /// 1 MB with sendfile(2) to C; A's eth0 must have sent exactly what B and C
    /// received and received exactly what they sent: nothing else on the wire.
    #[test]
    fn veth_counters_see_only_the_test_traffic() {
        const BYTES: u64 = 1_000_000;
        const PORT: u16 = 7070;
        let lab = NetLab::new("lab");
        let cg_a = pod_cgroup(&lab, "0a0a0a0a-1111-2222-3333-444444444444", 'a');
        let cg_b = pod_cgroup(&lab, "0b0b0b0b-1111-2222-3333-444444444444", 'b');
        let cg_c = lab.cgroup("system.slice/fake-redis.service");
        let a = lab.add_pod(
            "a",
            "10.201.1.2".parse().unwrap(),
            "10.201.1.1".parse().unwrap(),
            30,
            &cg_a,
        );
        let c = lab.add_pod(
            "c",
            "10.201.1.6".parse().unwrap(),
            "10.201.1.5".parse().unwrap(),
            30,
            &cg_c,
        );
        let b = lab.add_pod(
            "b",
            "10.201.2.2".parse().unwrap(),
            "10.201.2.1".parse().unwrap(),
            30,
            &cg_b,
        );
        let (root, netns) = (
            lab.cgroup_root.clone(),
            [
                a.netns.clone(),
                b.netns.clone(),
                c.netns.clone(),
                lab.router_netns().to_owned(),
            ],
        );

        // Setting up sent nothing: no ARP, no IPv6, nothing.
        std::thread::sleep(Duration::from_millis(200));
        for pod in [&a, &b, &c] {
            assert_eq!(
                (pod.counters(), pod.router_counters()),
                Default::default(),
                "packets on pod {}'s link before any traffic",
                pod.name
            );
        }

        // Processes of a pod run in its cgroup, and cgroup ids are the directories' inodes.
        let out = a.command("cat").arg("/proc/self/cgroup").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l == format!("0::{}", cg_a.hierarchy_path)),
            "pod command not in {}: {text}",
            cg_a.hierarchy_path
        );
        assert_eq!(cg_a.id, std::fs::metadata(&cg_a.path).unwrap().ino());
        assert_ne!(cg_a.id, cg_b.id);

        let server_b = serve(&b, PORT);
        let server_c = serve(&c, PORT);
        send(&a, &b, PORT, BYTES, "write");
        send(&a, &c, PORT, BYTES, "sendfile");
        assert_eq!(server_received(server_b, &b), serde_json::json!([BYTES]));
        assert_eq!(server_received(server_c, &c), serde_json::json!([BYTES]));
        lab.wait_quiet(
            &[&a, &b, &c],
            Duration::from_millis(300),
            Duration::from_secs(10),
        );

        let (ca, cb, cc) = (a.counters(), b.counters(), c.counters());
        let report = format!("A {ca:?}\nB {cb:?}\nC {cc:?}");
        assert_eq!(
            (ca.tx_packets, ca.tx_bytes),
            (cb.rx_packets + cc.rx_packets, cb.rx_bytes + cc.rx_bytes),
            "A sent (packets, bytes) != what B and C received:\n{report}"
        );
        assert_eq!(
            (ca.rx_packets, ca.rx_bytes),
            (cb.tx_packets + cc.tx_packets, cb.tx_bytes + cc.tx_bytes),
            "A received (packets, bytes) != what B and C sent:\n{report}"
        );
        // The router ends saw the same frames (nothing dropped or added on the way).
        assert_eq!(a.router_counters().rx_packets, ca.tx_packets, "{report}");
        assert_eq!(b.router_counters().tx_packets, cb.rx_packets, "{report}");
        assert!(
            ca.tx_ip_bytes() >= 2 * BYTES,
            "A's IP bytes sent {} < payload {}:\n{report}",
            ca.tx_ip_bytes(),
            2 * BYTES
        );
        assert!(
            cb.rx_ip_bytes() >= BYTES && cc.rx_ip_bytes() >= BYTES,
            "{report}"
        );
        // No offload: every frame fits the 1500-byte MTU.
        assert!(
            ca.tx_bytes <= ca.tx_packets * 1514,
            "GSO frames on the wire:\n{report}"
        );
        eprintln!("{report}");

        drop(lab);
        assert!(!root.exists(), "cgroup root {} left behind", root.display());
        let left = ip(&["netns", "list"]);
        for ns in netns {
            assert!(
                !left
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "namespace {ns} left behind"
            );
        }
    }

    /// Drop during a panic still removes everything, also processes still running.
    #[test]
    fn cleans_up_after_a_panic() {
        let names = std::sync::Arc::new(Mutex::new(None));
        let seen = names.clone();
        let result = std::thread::spawn(move || {
            let lab = NetLab::new("pan");
            let cg = lab.cgroup("system.slice/sleeper.service");
            let pod = lab.add_pod(
                "p",
                "10.202.1.2".parse().unwrap(),
                "10.202.1.1".parse().unwrap(),
                30,
                &cg,
            );
            let mut sleeper = pod.command("sleep");
            sleeper.arg("600").stdout(Stdio::null());
            // Deliberately not guarded: the lab must kill it.
            let child = sleeper.spawn().unwrap();
            *seen.lock().unwrap() = Some((lab.cgroup_root.clone(), pod.netns.clone(), child));
            panic!("test panic");
        })
        .join();
        assert!(result.is_err());
        let (root, netns, mut child) = names.lock().unwrap().take().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was not killed: {status}");
        assert!(!root.exists(), "cgroup root {} left behind", root.display());
        assert!(
            !Path::new("/run/netns").join(&netns).exists(),
            "namespace {netns} left behind"
        );
    }
}
