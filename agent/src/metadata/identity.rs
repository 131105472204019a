//! Who a cgroup is, and which zone an address is in: the labels every RED and network
//! series carries. One place, so the connection table and the byte accounting name a
//! workload the same way.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use super::{
    cgroup::{parse_cgroup_path, CgroupResolver, Workload},
    zones::{ZoneMap, UNKNOWN},
};
use crate::metadata::workload::{Name, PodLabels, WorkloadFields, WorkloadLabels};

/// Pod metadata by pod UID and container id, from wherever it comes (the Kubernetes
/// watch). Returns `None` for a pod it does not know.
pub trait PodDirectory: Send + Sync {
    fn pod_labels(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodLabels>;
    /// Bumped whenever an answer may have changed, so cached answers are dropped.
    fn generation(&self) -> u64;
}

/// The zone map and this node's own addresses, shared with the tasks that update them
/// (the Kubernetes node watch, IMDS, the address refresh).
#[derive(Clone)]
pub struct SharedZones(Arc<RwLock<ZoneState>>);

pub struct ZoneState {
    pub map: ZoneMap,
    pub local_addrs: HashSet<IpAddr>,
}

impl SharedZones {
    pub fn new(map: ZoneMap) -> Self {
        Self(Arc::new(RwLock::new(ZoneState {
            map,
            local_addrs: local_addresses(),
        })))
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut ZoneState) -> R) -> R {
        let mut state = self.0.write().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    pub fn read<R>(&self, f: impl FnOnce(&ZoneState) -> R) -> R {
        let state = self.0.read().unwrap_or_else(|e| e.into_inner());
        f(&state)
    }

    /// The zone of `ip` ([`UNKNOWN`] when nothing says).
    pub fn zone_of(&self, ip: IpAddr) -> String {
        self.read(|s| s.map.zone_of(ip, &s.local_addrs).to_owned())
    }

    /// Re-reads this node's interface addresses (they change: DHCP, new pods' veths).
    pub fn refresh_local_addrs(&self) {
        let addrs = local_addresses();
        self.update(|s| s.local_addrs = addrs);
    }
}

/// The addresses of this host's interfaces (in the agent's network namespace: the
/// host's, as the agent runs with hostNetwork), IPv4-mapped ones as IPv4.
pub fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifaddrs) != 0 {
            return out;
        }
        let mut cur = ifaddrs;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.insert(super::cidr::unmap(IpAddr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifaddrs);
    }
    out
}

/// Most cgroups remembered; past it the cache starts over (ids are never reused, so a
/// dropped entry is only recomputed).
const MAX_CACHED: usize = 65_536;
const UNKNOWN_SERVICE: &str = "unknown";

/// Resolves cgroup ids to workload labels and addresses to zone names, with caches.
pub struct Identity {
    cgroups: Option<CgroupResolver>,
    pods: Option<Arc<dyn PodDirectory>>,
    pods_generation: u64,
    zones: SharedZones,
    /// Workloads that do not depend on the process name (pods, systemd units).
    by_cgroup: HashMap<u64, Option<WorkloadLabels>>,
    /// Workloads named after a process, by name.
    by_comm: HashMap<String, WorkloadLabels>,
    names: HashMap<String, Name>,
    /// Where to read `/proc/<pid>/cgroup`, for processes whose v2 cgroup says nothing.
    procfs: Option<std::path::PathBuf>,
    /// Workloads found through procfs, by pid, with the process name they were found
    /// for (a reused pid is another process).
    by_process: HashMap<u32, (Name, Option<WorkloadLabels>)>,
    /// The id of the v2 root cgroup, where processes of v1-only placements sit.
    root_id: Option<u64>,
}

impl Identity {
    /// `cgroups`: the v2 hierarchy, if there is one; `pods`: the Kubernetes directory,
    /// if the agent runs on Kubernetes.
    pub fn new(
        cgroups: Option<CgroupResolver>,
        pods: Option<Arc<dyn PodDirectory>>,
        zones: SharedZones,
    ) -> Self {
        Self {
            cgroups,
            pods,
            pods_generation: 0,
            zones,
            by_cgroup: HashMap::new(),
            by_comm: HashMap::new(),
            names: HashMap::new(),
            procfs: None,
            by_process: HashMap::new(),
            root_id: None,
        }
    }

    /// Also look at `/proc/<pid>/cgroup` under `procfs` when a process's v2 cgroup is the
    /// root: on cgroup v1 and hybrid hosts a container runtime may place containers in
    /// the v1 hierarchies only, leaving every process in the v2 root.
    pub fn with_procfs(mut self, procfs: impl Into<std::path::PathBuf>) -> Self {
        use std::os::unix::fs::MetadataExt;
        self.procfs = Some(procfs.into());
        // A cgroup's id is its directory's inode number (see cgroup.rs).
        self.root_id = self
            .cgroups
            .as_ref()
            .and_then(|c| std::fs::metadata(c.root()).ok())
            .map(|m| m.ino());
        self
    }

    /// The workload of process `pid` named `comm` in v2 cgroup `cgroup_id`: as
    /// [`workload`](Self::workload), but when the v2 cgroup is the root (or there is no v2), the
    /// process's v1 cgroups are asked first.
    pub fn workload_of_process(&mut self, cgroup_id: u64, pid: u32, comm: &str) -> WorkloadLabels {
        let in_root = self.cgroups.is_none() || self.root_id == Some(cgroup_id);
        if in_root && self.procfs.is_some() {
            let found = match self.by_process.get(&pid) {
                Some((name, found)) if &*name.0 == comm => found.clone(),
                _ => {
                    let found = self.proc_cgroup_workload(pid);
                    if self.by_process.len() > MAX_CACHED {
                        self.by_process.clear();
                    }
                    let name = self.name(comm);
                    self.by_process.insert(pid, (name, found.clone()));
                    found
                }
            };
            if let Some(workload) = found {
                return workload;
            }
        }
        self.workload(cgroup_id, Some(comm))
    }

    fn proc_cgroup_workload(&mut self, pid: u32) -> Option<WorkloadLabels> {
        let path = self.procfs.as_ref()?.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(path).ok()?;
        let cgroup_path = super::cgroup::path_from_proc_cgroup(&text)?;
        self.labels_for_path(&cgroup_path)
    }

    /// Identity without cgroups, Kubernetes or zones: process names only (unit tests).
    pub fn process_names_only() -> Self {
        Self::new(
            None,
            None,
            SharedZones::new(ZoneMap::new(UNKNOWN, &[]).expect("an empty map is valid")),
        )
    }

    pub fn zones(&self) -> &SharedZones {
        &self.zones
    }

    fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        if self.names.len() > MAX_CACHED {
            self.names.clear();
        }
        let n = Name::new(s);
        self.names.insert(s.to_owned(), n.clone());
        n
    }

    /// The workload of a process named `comm` (when known) in cgroup `cgroup_id`.
    pub fn workload(&mut self, cgroup_id: u64, comm: Option<&str>) -> WorkloadLabels {
        if let Some(pods) = &self.pods {
            let generation = pods.generation();
            if generation != self.pods_generation {
                self.pods_generation = generation;
                self.by_cgroup.clear();
            }
        }
        let fixed = match self.by_cgroup.get(&cgroup_id) {
            Some(cached) => cached.clone(),
            None => {
                let resolved = self.resolve_cgroup(cgroup_id);
                if self.by_cgroup.len() > MAX_CACHED {
                    self.by_cgroup.clear();
                }
                self.by_cgroup.insert(cgroup_id, resolved.clone());
                resolved
            }
        };
        if let Some(workload) = fixed {
            return workload;
        }
        // Traffic without a process (the kernel's byte accounting knows only the
        // cgroup) is named after the cgroup: guessing one of the processes that share it
        // (a login session, the root cgroup, a container's scope) would misattribute the
        // others' bytes.
        let comm = match comm.filter(|c| !c.is_empty()) {
            Some(c) => c.to_owned(),
            None => self.cgroup_name(cgroup_id),
        };
        if let Some(w) = self.by_comm.get(&comm) {
            return w.clone();
        }
        if self.by_comm.len() > MAX_CACHED {
            self.by_comm.clear();
        }
        let w = WorkloadLabels::service(self.name(&comm));
        self.by_comm.insert(comm, w.clone());
        w
    }

    /// A cgroup's own name (its last path segment, e.g. `session-3.scope`), for traffic
    /// of a cgroup several processes share; `unknown` for the root or an unknown id.
    fn cgroup_name(&mut self, cgroup_id: u64) -> String {
        self.cgroups
            .as_mut()
            .and_then(|c| c.resolve(cgroup_id))
            .and_then(|path| path.rsplit('/').next().map(str::to_owned))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned())
    }

    /// The workload a cgroup path names by itself; `None` when the process name decides.
    fn resolve_cgroup(&mut self, cgroup_id: u64) -> Option<WorkloadLabels> {
        let path = self.cgroups.as_mut()?.resolve(cgroup_id)?;
        self.labels_for_path(&path)
    }

    /// The workload a cgroup path names by itself; `None` when the process name decides.
    fn labels_for_path(&mut self, path: &str) -> Option<WorkloadLabels> {
        match parse_cgroup_path(path) {
            Workload::Pod {
                pod_uid,
                container_id,
                ..
            } => {
                let labels = self
                    .pods
                    .as_ref()?
                    .pod_labels(&pod_uid, container_id.as_deref())?;
                let service_name = labels.owner.clone();
                Some(WorkloadLabels::new(WorkloadFields {
                    k8s: Some(labels),
                    service_name,
                }))
            }
            Workload::SystemdUnit(unit) => {
                let service = unit.strip_suffix(".service").unwrap_or(&unit).to_owned();
                Some(WorkloadLabels::service(self.name(&service)))
            }
            Workload::Other => None,
        }
    }

    /// The zone of `ip` as a label value.
    pub fn zone_of(&mut self, ip: IpAddr) -> Name {
        let zone = self.zones.zone_of(ip);
        self.name(&zone)
    }

    /// `peer_zone` for a request metric: the zone of the other end, if known.
    pub fn peer_zone(&mut self, ip: IpAddr) -> Option<Name> {
        let zone = self.zone_of(ip);
        (&*zone.0 != UNKNOWN).then_some(zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::zones::SubnetZone;

    const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    struct OnePod;
    impl PodDirectory for OnePod {
        fn pod_labels(&self, uid: &str, container: Option<&str>) -> Option<PodLabels> {
            (uid == "8f7c1d2e-0000-4000-8000-000000000001").then(|| PodLabels {
                namespace: Name::new("shop"),
                pod: Name::new("cart-7d9f-abcde"),
                container: Name::new(if container == Some(CONTAINER) {
                    "cart"
                } else {
                    ""
                }),
                owner: Name::new("cart"),
            })
        }
        fn generation(&self) -> u64 {
            1
        }
    }

    /// A directory tree removed when dropped.
    struct TempTree(std::path::PathBuf);
    impl TempTree {
        fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("nodetap-identity-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cgroup_tree() -> (TempTree, u64, u64, u64) {
        let dir = TempTree::new();
        let pod = dir.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f7c1d2e_0000_4000_8000_000000000001.slice/cri-containerd-{CONTAINER}.scope"
        ));
        let unit = dir.path().join("system.slice/redis-server.service");
        let other = dir.path().join("user.slice/session-1.scope");
        for d in [&pod, &unit, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let (a, b, c) = (ino(&pod), ino(&unit), ino(&other));
        (dir, a, b, c)
    }

    #[test]
    fn pods_units_and_processes_get_their_labels() {
        let (dir, pod, unit, other) = cgroup_tree();
        let zones = SharedZones::new(
            ZoneMap::new(
                "use1-az1",
                &[SubnetZone {
                    cidr: "10.1.0.0/16".into(),
                    zone: "use1-az2".into(),
                }],
            )
            .unwrap(),
        );
        let mut id = Identity::new(
            Some(CgroupResolver::new(dir.path())),
            Some(Arc::new(OnePod)),
            zones,
        );
        let w = id.workload(pod, Some("cart-server"));
        let k8s = w.fields().k8s.as_ref().expect("pod labels");
        assert_eq!(&*k8s.namespace.0, "shop");
        assert_eq!(&*k8s.container.0, "cart");
        assert_eq!(&*w.service_name().0, "cart");
        assert_eq!(
            &*id.workload(unit, Some("redis-server")).service_name().0,
            "redis-server"
        );
        assert_eq!(&*id.workload(other, Some("bash")).service_name().0, "bash");
        // Without a process name, the cgroup's own name.
        assert_eq!(
            &*id.workload(other, None).service_name().0,
            "session-1.scope"
        );
        assert_eq!(
            &*id.workload(999_999_999, None).service_name().0,
            UNKNOWN_SERVICE
        );
        assert_eq!(&*id.zone_of("10.1.2.3".parse().unwrap()).0, "use1-az2");
        assert_eq!(&*id.zone_of("127.0.0.1".parse().unwrap()).0, "use1-az1");
        assert_eq!(id.peer_zone("192.168.7.7".parse().unwrap()), None);
    }

    #[test]
    fn processes_in_the_v2_root_are_named_by_their_v1_cgroups() {
        let (dir, _, _, _) = cgroup_tree();
        let procfs = TempTree::new();
        std::fs::create_dir_all(procfs.path().join("42")).unwrap();
        // A hybrid host whose runtime (cgroupfs driver) placed the container in v1 only.
        std::fs::write(
            procfs.path().join("42/cgroup"),
            format!(
                "12:memory:/kubepods/burstable/pod8f7c1d2e-0000-4000-8000-000000000001/{CONTAINER}\n\
                 1:name=systemd:/kubepods/burstable/pod8f7c1d2e-0000-4000-8000-000000000001/{CONTAINER}\n\
                 0::/\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(procfs.path().join("43")).unwrap();
        std::fs::write(
            procfs.path().join("43/cgroup"),
            "1:name=systemd:/user.slice\n0::/\n",
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let root_id = std::fs::metadata(dir.path()).unwrap().ino();
        let mut id = Identity::new(
            Some(CgroupResolver::new(dir.path())),
            Some(Arc::new(OnePod)),
            SharedZones::new(ZoneMap::new(UNKNOWN, &[]).unwrap()),
        )
        .with_procfs(procfs.path());
        let w = id.workload_of_process(root_id, 42, "cart-server");
        assert_eq!(
            &*w.fields().k8s.as_ref().expect("pod labels").container.0,
            "cart"
        );
        let w = id.workload_of_process(root_id, 43, "bash");
        assert!(w.fields().k8s.is_none());
        assert_eq!(&*w.service_name().0, "bash");
    }

    #[test]
    fn unknown_pods_fall_back_to_the_process_name() {
        let (dir, pod, _, _) = cgroup_tree();
        let mut id = Identity::new(
            Some(CgroupResolver::new(dir.path())),
            None,
            SharedZones::new(ZoneMap::new(UNKNOWN, &[]).unwrap()),
        );
        let w = id.workload(pod, Some("cart-server"));
        assert!(w.fields().k8s.is_none());
        assert_eq!(&*w.service_name().0, "cart-server");
    }
}
