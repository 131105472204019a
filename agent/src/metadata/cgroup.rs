//! Workload identity from cgroup paths, and cgroup v2 ids to paths.
//!
//! The kernel stamps every event with `bpf_get_current_cgroup_id()`: the id of the task's
//! cgroup in the v2 hierarchy, which is the inode number of that cgroup's directory
//! (kernfs node id; on 64-bit kernels since 5.5 the inode number is the whole id, and ids
//! of one hierarchy are allocated in increasing order and never reused).
//! [`CgroupResolver`] turns the id into a path by walking the v2 hierarchy; the path says
//! who the workload is ([`parse_cgroup_path`]).
//!
//! Layouts recognised (see `tests/fixtures/cgroup/` for one example of each):
//!
//! | who | path |
//! |---|---|
//! | kubelet, systemd driver | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '_' for '-'>.slice/cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`; Guaranteed pods as `kubepods-pod<uid>.slice` directly under `kubepods.slice`) |
//! | kubelet, cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (CRI-O: `crio-<id>`) |
//! | systemd services | `/system.slice/redis-server.service`, `/system.slice/system-postgresql.slice/postgresql@15-main.service` |
//!
//! with or without a mount prefix (`/sys/fs/cgroup`, `/sys/fs/cgroup/unified`,
//! `/sys/fs/cgroup/memory`, ...), and with `..` segments as a process in another cgroup
//! namespace sees them. The kubelet's `--cgroup-root` may add outer slices
//! (`kubelet.slice/kubelet-kubepods.slice/...` in kind): a pod is recognised by its own
//! segment, wherever it is.
//!
//! Pod UIDs come back canonical: lowercase with dashes (`8-4-4-4-12`). Static pods are the
//! exception that proves the rule: their UID is the kubelet's 32-hex-digit hash of the
//! manifest, without dashes, and it is returned as is; the API server's mirror pod has
//! another UID and carries this one in its `kubernetes.io/config.mirror` annotation.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Who a cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A Kubernetes pod, and the container in it when the path goes down to one.
    Pod {
        /// Canonical UID: lowercase, with dashes (static pods: the 32-digit hash).
        pod_uid: String,
        /// Runtime container id (lowercase hex), without the runtime's prefix. `None` for
        /// the pod's own cgroup and for CRI-O's `crio-conmon-<id>` monitor.
        container_id: Option<String>,
        /// `guaranteed`, `burstable` or `besteffort`, from the QoS level the kubelet put
        /// the pod under; `None` when the path does not show it.
        qos: Option<String>,
    },
    /// A systemd service outside Kubernetes, e.g. `redis-server.service`.
    SystemdUnit(String),
    /// Anything else: the root cgroup, `init.scope`, user sessions, plain containers, ...
    Other,
}

/// Who owns the cgroup at `path` (a path in the cgroup hierarchy, or a directory under a
/// cgroup mount). Never fails: what it does not recognise is [`Workload::Other`].
pub fn parse_cgroup_path(path: &str) -> Workload {
    // A removed cgroup still shows in /proc/<pid>/cgroup of a zombie, with this suffix.
    let path = path.trim().trim_end_matches(" (deleted)");
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect();

    for (i, segment) in segments.iter().enumerate() {
        let found = match systemd_pod_slice(segment) {
            Some(found) => Some(found),
            None => cgroupfs_pod_dir(segment).map(|uid| {
                let qos = i
                    .checked_sub(1)
                    .and_then(|p| segments.get(p))
                    .and_then(|parent| cgroupfs_qos(parent));
                (uid, qos)
            }),
        };
        if let Some((pod_uid, qos)) = found {
            let container_id = segments.get(i + 1).and_then(|c| container_id(c));
            return Workload::Pod {
                pod_uid,
                container_id,
                qos: qos.map(str::to_owned),
            };
        }
    }

    // systemd puts services in system.slice, template instances in a slice of their own
    // (`system-postgresql.slice/postgresql@15-main.service`); a service that delegates
    // its subtree (Delegate=yes) may have cgroups below it, which still belong to it.
    if let Some(start) = segments.iter().position(|s| *s == "system.slice") {
        for segment in &segments[start + 1..] {
            if let Some(name) = segment.strip_suffix(".service") {
                if is_unit_name(name) {
                    return Workload::SystemdUnit((*segment).to_owned());
                }
                break;
            }
            if !segment.ends_with(".slice") {
                break;
            }
        }
    }
    Workload::Other
}

/// The cgroup path of a process from the text of `/proc/<pid>/cgroup`.
///
/// Lines are `hierarchy-id:controllers:path` (cgroups(7)). The v2 line (`0::/path`) is
/// preferred, as it is the hierarchy whose ids the kernel reports; else the v1
/// `name=systemd` line, which systemd and the kubelet's systemd driver keep in step with
/// the workload; else any v1 controller line. On hybrid hosts a process can sit in the
/// root of one hierarchy (`0::/`) while a v1 hierarchy shows where it really is (the
/// cgroupfs driver places containers only in v1), so a root path gives way to the first
/// non-root one in that order. `None` when no line has the `N:controllers:path` shape.
pub fn path_from_proc_cgroup(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut systemd = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            continue;
        }
        let path = path.trim_end_matches(" (deleted)");
        let slot = if id == "0" && controllers.is_empty() {
            &mut v2
        } else if controllers.split(',').any(|c| c == "name=systemd") {
            &mut systemd
        } else if controllers.is_empty() || controllers.split(',').all(|c| c.starts_with("name=")) {
            // A named v1 hierarchy of some other manager: nothing says it tracks workloads.
            continue;
        } else {
            &mut v1
        };
        // Keep the first non-root path of each kind (v1 lines of different controllers
        // usually agree; where they do not, the first is as good as any).
        let better = match slot {
            None => true,
            Some(old) => *old == "/" && path != "/",
        };
        if better {
            *slot = Some(path);
        }
    }
    let candidates = [v2, systemd, v1];
    candidates
        .iter()
        .flatten()
        .find(|p| **p != "/")
        .or_else(|| candidates.iter().flatten().next())
        .map(|p| (*p).to_owned())
}

/// `kubepods-burstable-pod<uid>.slice` and friends: the kubelet's systemd driver names a
/// pod's slice after its parents, `-` separated, with the UID's dashes escaped as `_`.
fn systemd_pod_slice(segment: &str) -> Option<(String, Option<&'static str>)> {
    let stem = segment.strip_suffix(".slice")?;
    // Hex digits and '_' contain no "-pod", so the last one starts the pod's part.
    let at = stem.rfind("-pod")?;
    let uid = canonical_uid(&stem[at + 4..], '_')?;
    let parents: Vec<&str> = stem[..at].split('-').collect();
    let kubepods = parents.iter().position(|p| *p == "kubepods")?;
    let qos = match parents.get(kubepods + 1..)? {
        [] => Some("guaranteed"),
        ["burstable"] => Some("burstable"),
        ["besteffort"] => Some("besteffort"),
        _ => None,
    };
    Some((uid, qos))
}

/// `pod<uid>`: the cgroupfs driver's directory for a pod.
fn cgroupfs_pod_dir(segment: &str) -> Option<String> {
    canonical_uid(segment.strip_prefix("pod")?, '-')
}

/// The QoS level shown by the parent of a cgroupfs pod directory: Guaranteed pods live
/// directly in the kubelet's root (`kubepods`), the others in a directory per level.
fn cgroupfs_qos(parent: &str) -> Option<&'static str> {
    match parent {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        "kubepods" => Some("guaranteed"),
        _ => None,
    }
}

/// A pod UID written with `sep` between its groups (`8-4-4-4-12` hex digits), or a
/// static pod's 32 hex digits; lowercase with dashes.
fn canonical_uid(raw: &str, sep: char) -> Option<String> {
    let bytes = raw.as_bytes();
    if bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some(raw.to_ascii_lowercase());
    }
    if bytes.len() != 36 {
        return None;
    }
    let mut uid = String::with_capacity(36);
    for (i, c) in raw.chars().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != sep {
                return None;
            }
            uid.push('-');
        } else if c.is_ascii_hexdigit() {
            uid.push(c.to_ascii_lowercase());
        } else {
            return None;
        }
    }
    Some(uid)
}

/// The container id in a container's cgroup name: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope` (systemd driver), `<id>` or `crio-<id>`
/// (cgroupfs driver).
fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // CRI-O's monitor process for the container, not the container.
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "cri-dockerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name);
    // 64 hex digits from every runtime in practice; 12 is Docker's short form.
    let plausible = (12..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    plausible.then(|| id.to_ascii_lowercase())
}

/// A unit name before its `.service` suffix: systemd allows ASCII letters, digits and
/// `:-_.\` plus `@` for template instances (systemd.unit(5)).
fn is_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// Why the v2 hierarchy could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read cgroup v2 root {root}")]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Most cgroups one walk records. A 110-pod node has about a thousand.
pub const DEFAULT_MAX_CGROUPS: usize = 100_000;
/// Deepest cgroup a walk descends to, below the root.
const MAX_DEPTH: usize = 64;

/// Every cgroup under `root` (a cgroup v2 mount such as `/sys/fs/cgroup` or
/// `/sys/fs/cgroup/unified`): id to path relative to `root` (`/` for the root itself,
/// else `/a/b`). One walk, bounded by [`DEFAULT_MAX_CGROUPS`] and a depth of 64.
pub fn cgroup_id_to_path(root: &Path) -> Result<HashMap<u64, String>, CgroupError> {
    walk(root, DEFAULT_MAX_CGROUPS).map(|scan| scan.paths)
}

struct Scan {
    paths: HashMap<u64, String>,
    max_id: u64,
    truncated: bool,
}

fn walk(root: &Path, max_cgroups: usize) -> Result<Scan, CgroupError> {
    let root_id = fs::metadata(root)
        .map_err(|source| CgroupError::Root {
            root: root.to_owned(),
            source,
        })?
        .ino();
    let mut paths = HashMap::new();
    paths.insert(root_id, "/".to_owned());
    let mut max_id = root_id;
    let mut truncated = false;
    // Depth-first with an explicit stack: (directory, path relative to root, depth).
    let mut stack = vec![(root.to_owned(), String::new(), 0usize)];
    'walk: while let Some((dir, rel, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(source) if depth == 0 => {
                return Err(CgroupError::Root {
                    root: root.to_owned(),
                    source,
                })
            }
            // Removed while we walked (pods come and go), or not ours to read.
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            // cgroupfs fills d_type, so this costs no stat(2).
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if paths.len() >= max_cgroups {
                truncated = true;
                break 'walk;
            }
            // readdir's d_ino on kernfs is the node id, which is the cgroup id.
            let id = entry.ino();
            let path = format!("{rel}/{name}");
            max_id = max_id.max(id);
            if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), path.clone(), depth + 1));
            } else {
                truncated = true;
            }
            paths.insert(id, path);
        }
    }
    Ok(Scan {
        paths,
        max_id,
        truncated,
    })
}

/// Counters for the agent's own telemetry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Ids found in the cache.
    pub hits: u64,
    /// Ids not found, after a rescan or without one.
    pub misses: u64,
    /// Walks of the hierarchy done.
    pub rescans: u64,
    /// Walks stopped by the cgroup or depth limit.
    pub truncated: u64,
    /// Walks that failed (the root could not be read).
    pub failures: u64,
    /// Ids the walks did not know, found among the cgroups the kernel saw created.
    pub created: u64,
}

/// Cgroups the kernel reported as they were created (the agent's `cgroup:cgroup_mkdir`
/// hook): asked for an id the walks do not know, e.g. a cgroup created and removed
/// between two walks.
pub trait CreatedCgroups: Send + std::fmt::Debug {
    /// The path (relative to the v2 root) cgroup `id` was created with.
    fn path_of(&mut self, id: u64) -> Option<String>;
}

/// How long a removed cgroup's path is kept: as long as a deleted pod keeps labelling
/// its last records (`metadata::kubernetes`), so what a pod's cgroup sent before it went
/// is still named when it is drained (connections' records, the byte accounting's
/// flows every 2 s).
pub const DEFAULT_REMOVED_RETENTION: Duration = Duration::from_secs(60);

/// Cgroup v2 id to path, cached; a miss asks the cgroups the kernel saw created (if
/// given), then rescans the hierarchy, at most once per `min_rescan_interval` (default
/// 1 s), and not at all for ids known to be gone.
///
/// Ids are never reused, so a cached entry is never wrong, only stale once its cgroup is
/// removed; each rescan replaces the cache, which bounds it by the live cgroups, and
/// keeps what it no longer finds for `removed_retention` (default 60 s) beside it, so
/// the last records of a removed cgroup are still named. Ids grow
/// monotonically, so an id no larger than the largest one seen by the walk before the
/// latest, and not found by the latest, belonged to a cgroup that was already gone: such
/// ids (short-lived processes whose events arrive after their cgroup was removed) cost no
/// rescan.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    cache: HashMap<u64, String>,
    /// Cgroups the latest walks no longer found, with when that was noticed.
    removed: HashMap<u64, (String, Instant)>,
    removed_retention: Duration,
    created: Option<Box<dyn CreatedCgroups>>,
    last_scan: Option<Instant>,
    min_rescan_interval: Duration,
    max_cgroups: usize,
    /// Largest id seen by the latest walk.
    last_max_id: u64,
    /// Largest id seen by the walk before the latest: every id up to it was allocated
    /// before the latest walk started.
    settled_max_id: u64,
    stats: ResolverStats,
}

impl CgroupResolver {
    /// A resolver for the v2 hierarchy mounted at `root`; it walks on first use.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: HashMap::new(),
            removed: HashMap::new(),
            removed_retention: DEFAULT_REMOVED_RETENTION,
            created: None,
            last_scan: None,
            min_rescan_interval: Duration::from_secs(1),
            max_cgroups: DEFAULT_MAX_CGROUPS,
            last_max_id: 0,
            settled_max_id: 0,
            stats: ResolverStats::default(),
        }
    }

    /// Shortest time between two rescans caused by misses.
    pub fn with_min_rescan_interval(mut self, interval: Duration) -> Self {
        self.min_rescan_interval = interval;
        self
    }

    /// Also ask `created` (cgroups as the kernel created them) for ids the walks miss.
    pub fn with_created(mut self, created: Box<dyn CreatedCgroups>) -> Self {
        self.created = Some(created);
        self
    }

    /// How long a removed cgroup's path stays known (default
    /// [`DEFAULT_REMOVED_RETENTION`]).
    pub fn with_removed_retention(mut self, retention: Duration) -> Self {
        self.removed_retention = retention;
        self
    }

    /// Most cgroups one walk records (default [`DEFAULT_MAX_CGROUPS`]).
    pub fn with_max_cgroups(mut self, max: usize) -> Self {
        self.max_cgroups = max.max(1);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id`, relative to the root (`/kubepods.slice/...`).
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        let known = self
            .cache
            .get(&id)
            .or_else(|| self.removed.get(&id).map(|(path, _)| path));
        if let Some(path) = known {
            self.stats.hits += 1;
            return Some(path.clone());
        }
        // Created since the latest walk, and maybe removed already: the kernel said so
        // when it was created. Kept in the cache until a walk finds it gone.
        if let Some(path) = self.created.as_mut().and_then(|c| c.path_of(id)) {
            self.stats.hits += 1;
            self.stats.created += 1;
            self.cache.insert(id, path.clone());
            return Some(path);
        }
        let gone = id <= self.settled_max_id;
        let too_soon = self
            .last_scan
            .is_some_and(|at| at.elapsed() < self.min_rescan_interval);
        if gone || too_soon {
            self.stats.misses += 1;
            return None;
        }
        if let Err(e) = self.rescan() {
            log::warn!("cgroup id {id}: {}", crate::error_chain(&e));
        }
        match self.cache.get(&id) {
            Some(path) => {
                self.stats.hits += 1;
                Some(path.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Walks the hierarchy now and replaces the cache (what the walk no longer finds is
    /// kept for `removed_retention`); returns how many cgroups the walk found.
    pub fn rescan(&mut self) -> Result<usize, CgroupError> {
        self.last_scan = Some(Instant::now());
        self.stats.rescans += 1;
        let scan = walk(&self.root, self.max_cgroups).inspect_err(|_| {
            self.stats.failures += 1;
        })?;
        if scan.truncated {
            self.stats.truncated += 1;
            log::warn!(
                "cgroup walk of {} stopped at {} cgroups or depth {MAX_DEPTH}: some workloads stay unresolved",
                self.root.display(),
                scan.paths.len()
            );
        } else {
            // A truncated walk may have missed live cgroups: it proves nothing is gone.
            self.settled_max_id = self.last_max_id;
        }
        self.last_max_id = scan.max_id;
        let old = std::mem::replace(&mut self.cache, scan.paths);
        let now = Instant::now();
        let retention = self.removed_retention;
        self.removed
            .retain(|_, (_, since)| now.duration_since(*since) < retention);
        for (id, path) in old {
            // Bounded as the walks are: past it, removed cgroups are forgotten at once.
            if !self.cache.contains_key(&id) && self.removed.len() < self.max_cgroups {
                self.removed.insert(id, (path, now));
            }
        }
        Ok(self.cache.len())
    }

    /// Cgroups in the cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn stats(&self) -> ResolverStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(uid: &str, container: Option<&str>, qos: Option<&str>) -> Workload {
        Workload::Pod {
            pod_uid: uid.to_owned(),
            container_id: container.map(str::to_owned),
            qos: qos.map(str::to_owned),
        }
    }

    const UID: &str = "0f3e7c52-9a1b-4c6d-8e2f-3b4a5c6d7e8f";
    const CID: &str = "4b8e2a9c1d7f3e6a5b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a";

    #[test]
    fn systemd_driver_burstable_containerd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse_cgroup_path(&path),
            pod(UID, Some(CID), Some("burstable"))
        );
    }

    #[test]
    fn uppercase_is_canonicalised() {
        let path = format!(
            "/kubepods/besteffort/pod{}/{}",
            UID.to_uppercase(),
            CID.to_uppercase()
        );
        assert_eq!(
            parse_cgroup_path(&path),
            pod(UID, Some(CID), Some("besteffort"))
        );
    }

    #[test]
    fn malformed_uids_are_not_pods() {
        for path in [
            "/kubepods/burstable/pod0f3e7c52-9a1b-4c6d-8e2f-3b4a5c6d7e8/abc",
            "/kubepods/burstable/pod0f3e7c52_9a1b_4c6d_8e2f_3b4a5c6d7e8f/abc",
            "/kubepods.slice/kubepods-pod0f3e7c52-9a1b-4c6d-8e2f-3b4a5c6d7e8f.slice",
            "/kubepods.slice/other-pod0f3e7c52_9a1b_4c6d_8e2f_3b4a5c6d7e8f.slice",
            "/kubepods/burstable/podzz3e7c52-9a1b-4c6d-8e2f-3b4a5c6d7e8f",
        ] {
            assert_eq!(parse_cgroup_path(path), Workload::Other, "{path}");
        }
    }

    #[test]
    fn container_ids_must_look_like_ids() {
        let base = format!("/kubepods/pod{UID}");
        for (child, want) in [
            ("init.scope", None),
            ("crio-conmon-abcdef0123456789.scope", None),
            ("abcdef01234", None),
            ("abcdef012345", Some("abcdef012345")),
            ("crio-ABCDEF0123456789", Some("abcdef0123456789")),
            ("libpod-abcdef0123456789.scope", Some("abcdef0123456789")),
        ] {
            assert_eq!(
                parse_cgroup_path(&format!("{base}/{child}")),
                pod(UID, want, Some("guaranteed")),
                "{child}"
            );
        }
    }

    #[test]
    fn services_only_under_system_slice() {
        for (path, want) in [
            (
                "/system.slice/redis-server.service",
                Workload::SystemdUnit("redis-server.service".into()),
            ),
            (
                "/system.slice/containerd.service/some/delegated",
                Workload::SystemdUnit("containerd.service".into()),
            ),
            ("/system.slice/docker-abc.scope", Workload::Other),
            ("/system.slice", Workload::Other),
            ("/system.slice/.service", Workload::Other),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
                Workload::Other,
            ),
            ("/init.scope", Workload::Other),
            ("/", Workload::Other),
            ("", Workload::Other),
        ] {
            assert_eq!(parse_cgroup_path(path), want, "{path}");
        }
    }

    /// `path => expected` lines from tests/fixtures/cgroup/*.txt; see its README.
    fn parse_expected(expected: &str) -> Workload {
        let words: Vec<&str> = expected.split_whitespace().collect();
        let field = |name: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .filter(|v| *v != "-")
                .map(str::to_owned)
        };
        match words.first() {
            Some(&"pod") => Workload::Pod {
                pod_uid: field("uid").expect("pod without uid="),
                container_id: field("container"),
                qos: field("qos"),
            },
            Some(&"unit") => Workload::SystemdUnit(words[1].to_owned()),
            Some(&"other") => Workload::Other,
            _ => panic!("bad expectation {expected:?}"),
        }
    }

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cgroup")
    }

    #[test]
    fn fixtures() {
        let mut cases = 0;
        let mut files: Vec<PathBuf> = fs::read_dir(fixture_dir())
            .expect("tests/fixtures/cgroup")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        assert!(files.len() >= 5, "fixture files missing: {files:?}");
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (path, expected) = line
                    .split_once(" => ")
                    .unwrap_or_else(|| panic!("{}:{}: no ' => '", file.display(), n + 1));
                assert_eq!(
                    parse_cgroup_path(path),
                    parse_expected(expected),
                    "{}:{}: {path}",
                    file.display(),
                    n + 1
                );
                cases += 1;
            }
        }
        assert!(cases >= 30, "only {cases} fixture cases");
    }

    #[test]
    fn proc_cgroup_fixtures() {
        let dir = fixture_dir().join("proc");
        let mut cases = 0;
        for entry in fs::read_dir(&dir).expect("tests/fixtures/cgroup/proc") {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|x| x != "cgroup") {
                continue;
            }
            let text = fs::read_to_string(&file).unwrap();
            let expected = fs::read_to_string(file.with_extension("expected"))
                .unwrap_or_else(|e| panic!("{}: no .expected: {e}", file.display()));
            let mut lines = expected.lines();
            let want_path = lines.next().unwrap().trim();
            let want_path = (want_path != "none").then_some(want_path);
            let got = path_from_proc_cgroup(&text);
            assert_eq!(got.as_deref(), want_path, "{}", file.display());
            if let Some(workload) = lines.next() {
                assert_eq!(
                    parse_cgroup_path(got.as_deref().unwrap_or("")),
                    parse_expected(workload),
                    "{}",
                    file.display()
                );
            }
            cases += 1;
        }
        assert!(cases >= 5, "only {cases} /proc/<pid>/cgroup fixtures");
    }

    #[test]
    fn proc_cgroup_preferences() {
        assert_eq!(
            path_from_proc_cgroup("0::/a\n1:name=systemd:/b\n"),
            Some("/a".into())
        );
        assert_eq!(
            path_from_proc_cgroup("2:cpu:/c\n1:name=systemd:/b\n"),
            Some("/b".into())
        );
        assert_eq!(
            path_from_proc_cgroup("0::/\n2:memory:/c\n1:name=systemd:/\n"),
            Some("/c".into())
        );
        assert_eq!(path_from_proc_cgroup("0::/\n"), Some("/".into()));
        assert_eq!(
            path_from_proc_cgroup("0::/a/b (deleted)\n"),
            Some("/a/b".into())
        );
        assert_eq!(
            path_from_proc_cgroup("0::/with:colon\n"),
            Some("/with:colon".into())
        );
        assert_eq!(path_from_proc_cgroup("1:name=other:/x\n"), None);
        assert_eq!(path_from_proc_cgroup(""), None);
        assert_eq!(path_from_proc_cgroup("garbage\nx::/a\n"), None);
    }

    fn uid_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[0-9a-f]{32}",
        ]
    }

    proptest! {
        #[test]
        fn never_panics(path in any::<String>()) {
            let _ = parse_cgroup_path(&path);
            let _ = path_from_proc_cgroup(&path);
        }

        #[test]
        fn never_panics_on_path_like(
            segments in prop::collection::vec(
                prop_oneof![
                    "[a-z_.-]{0,12}",
                    "kubepods[a-z-]{0,12}(-pod[0-9a-f_-]{0,40})?\\.slice",
                    "pod[0-9a-fA-F_-]{0,40}",
                    "(cri-containerd-|crio-|crio-conmon-|docker-)?[0-9a-f]{0,70}(\\.scope)?",
                    "\\.\\.|system\\.slice|[a-z@-]{1,10}\\.service",
                ],
                0..8,
            ),
            cgroup_lines in "([0-9]{0,2}:[a-z=,]{0,12}:/[ -~]{0,20}\n){0,6}",
        ) {
            let _ = parse_cgroup_path(&format!("/{}", segments.join("/")));
            let _ = path_from_proc_cgroup(&cgroup_lines);
        }

        #[test]
        fn systemd_round_trip(
            uid in uid_strategy(),
            cid in "[0-9a-f]{64}",
            qos in prop::sample::select(vec!["", "burstable", "besteffort"]),
            runtime in prop::sample::select(vec!["cri-containerd", "crio", "docker"]),
            prefix in prop::sample::select(vec!["", "/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"]),
        ) {
            let escaped = uid.replace('-', "_");
            let path = if qos.is_empty() {
                format!("{prefix}/kubepods.slice/kubepods-pod{escaped}.slice/{runtime}-{cid}.scope")
            } else {
                format!("{prefix}/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{escaped}.slice/{runtime}-{cid}.scope")
            };
            let want_qos = if qos.is_empty() { "guaranteed" } else { qos };
            prop_assert_eq!(parse_cgroup_path(&path), pod(&uid, Some(&cid), Some(want_qos)));
        }

        #[test]
        fn cgroupfs_round_trip(
            uid in uid_strategy(),
            cid in "[0-9a-f]{64}",
            qos in prop::sample::select(vec!["", "burstable", "besteffort"]),
            prefix in prop::sample::select(vec!["", "/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct"]),
        ) {
            let qos_dir = if qos.is_empty() { String::new() } else { format!("/{qos}") };
            let path = format!("{prefix}/kubepods{qos_dir}/pod{uid}/{cid}");
            let want_qos = if qos.is_empty() { "guaranteed" } else { qos };
            prop_assert_eq!(parse_cgroup_path(&path), pod(&uid, Some(&cid), Some(want_qos)));
        }
    }

    /// Removes the directories (deepest first) even when the test fails.
    struct RemoveDirs(Vec<PathBuf>);

    impl Drop for RemoveDirs {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    /// Removes a plain directory tree even when the test fails.
    struct RemoveTree(PathBuf);

    impl Drop for RemoveTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn resolver_walks_a_tree() {
        // Plain directories have inodes too: the walk itself, without root.
        let base = std::env::temp_dir().join(format!("nodetap-cgwalk-{}", std::process::id()));
        let a = base.join("a.slice");
        let b = a.join("b.scope");
        let c = base.join("c");
        let _guard = RemoveTree(base.clone());
        for dir in [&base, &a, &b, &c] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(base.join("cgroup.procs"), "").unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();

        let map = cgroup_id_to_path(&base).unwrap();
        assert_eq!(map.len(), 4, "{map:?}");
        assert_eq!(map[&ino(&base)], "/");
        assert_eq!(map[&ino(&b)], "/a.slice/b.scope");

        let mut resolver =
            CgroupResolver::new(&base).with_min_rescan_interval(Duration::from_secs(3600));
        assert_eq!(resolver.resolve(ino(&c)).as_deref(), Some("/c"));
        assert_eq!(resolver.stats().rescans, 1);
        assert_eq!(resolver.resolve(ino(&a)).as_deref(), Some("/a.slice"));
        assert_eq!(resolver.stats().rescans, 1, "a hit must not rescan");

        // Created after the walk: a miss within the interval does not rescan...
        let d = base.join("d");
        fs::create_dir(&d).unwrap();
        assert_eq!(resolver.resolve(ino(&d)), None);
        assert_eq!(resolver.stats().rescans, 1);
        // ...and one after it does.
        let mut resolver = resolver.with_min_rescan_interval(Duration::ZERO);
        assert_eq!(resolver.resolve(ino(&d)).as_deref(), Some("/d"));
        assert_eq!(resolver.stats().rescans, 2);

        let small = CgroupResolver::new(&base).with_max_cgroups(2).rescan();
        assert_eq!(small.unwrap(), 2);
        assert!(matches!(
            CgroupResolver::new(base.join("missing")).rescan(),
            Err(CgroupError::Root { .. })
        ));
    }

    /// Cgroups "the kernel reported" created, for the resolver.
    #[derive(Debug)]
    struct Created(HashMap<u64, String>);

    impl CreatedCgroups for Created {
        fn path_of(&mut self, id: u64) -> Option<String> {
            self.0.get(&id).cloned()
        }
    }

    #[test]
    fn created_and_removed_cgroups_stay_named() {
        let base = std::env::temp_dir().join(format!("nodetap-cggone-{}", std::process::id()));
        let a = base.join("a.scope");
        let _guard = RemoveTree(base.clone());
        for dir in [&base, &a] {
            fs::create_dir(dir).unwrap();
        }
        let a_id = fs::metadata(&a).unwrap().ino();
        // An id no walk can see: created and removed between two walks.
        let gone = u64::MAX - 1;
        let mut resolver = CgroupResolver::new(&base)
            .with_min_rescan_interval(Duration::from_secs(3600))
            .with_created(Box::new(Created(HashMap::from([(
                gone,
                "/kubepods/pod-gone/c".to_owned(),
            )]))));
        resolver.rescan().unwrap();
        assert_eq!(resolver.resolve(a_id).as_deref(), Some("/a.scope"));
        assert_eq!(
            resolver.resolve(gone).as_deref(),
            Some("/kubepods/pod-gone/c"),
            "a cgroup the kernel reported created is named without a walk"
        );
        let stats = resolver.stats();
        assert_eq!((stats.created, stats.rescans), (1, 1), "{stats:?}");

        // Removed after a walk saw it: a later walk keeps both names for the retention.
        fs::remove_dir(&a).unwrap();
        resolver.rescan().unwrap();
        assert_eq!(resolver.len(), 1, "the live cache holds the root alone");
        assert_eq!(resolver.resolve(a_id).as_deref(), Some("/a.scope"));
        assert_eq!(
            resolver.resolve(gone).as_deref(),
            Some("/kubepods/pod-gone/c")
        );
        assert_eq!(resolver.stats().created, 1, "the learned path was kept");

        // Past the retention they are forgotten: the next walk after the one that noticed.
        let mut resolver = resolver.with_removed_retention(Duration::ZERO);
        resolver.rescan().unwrap();
        assert_eq!(resolver.resolve(a_id), None);
        assert_eq!(
            resolver.resolve(gone).as_deref(),
            Some("/kubepods/pod-gone/c"),
            "still reported by the kernel's record"
        );
    }

    /// Where cgroup v2 is mounted (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    fn cgroup2_mount() -> PathBuf {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("no cgroup2 mount in /proc/self/mounts: this test needs cgroup v2 (unified or hybrid)")
    }

    #[test]
    fn resolver_on_real_cgroup2() {
        let root = cgroup2_mount();
        let parent = root.join(format!("nodetap-test-{}", std::process::id()));
        let child = parent.join("kubepods-burstable-pod0f3e7c52_9a1b_4c6d_8e2f_3b4a5c6d7e8f.slice");
        let mut guard = RemoveDirs(Vec::new());
        for dir in [&parent, &child] {
            fs::create_dir(dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e} (this test needs root)", dir.display()));
            guard.0.push(dir.clone());
        }
        let id = fs::metadata(&child).unwrap().ino();
        let mut resolver = CgroupResolver::new(&root)
            .with_min_rescan_interval(Duration::ZERO)
            .with_removed_retention(Duration::ZERO);
        let path = resolver
            .resolve(id)
            .unwrap_or_else(|| panic!("cgroup id {id} of {} not resolved", child.display()));
        let want = format!(
            "/{}/{}",
            parent.file_name().unwrap().to_str().unwrap(),
            child.file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(path, want);
        assert!(matches!(parse_cgroup_path(&path), Workload::Pod { .. }));
        let root_id = fs::metadata(&root).unwrap().ino();
        assert_eq!(
            resolver.resolve(root_id).as_deref(),
            Some("/"),
            "root cgroup"
        );

        // Removed: once a later cgroup has been seen by two walks, the id is known to be
        // gone and costs no walk.
        let later = root.join(format!("nodetap-test-{}-later", std::process::id()));
        fs::create_dir(&later).unwrap();
        let _later_guard = RemoveDirs(vec![later]);
        drop(guard);
        assert!(!child.exists());
        resolver.rescan().unwrap();
        resolver.rescan().unwrap();
        let rescans = resolver.stats().rescans;
        assert_eq!(resolver.resolve(id), None);
        assert_eq!(
            resolver.stats().rescans,
            rescans,
            "a gone id must not rescan"
        );
    }
}
