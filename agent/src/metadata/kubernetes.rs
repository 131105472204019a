//! Kubernetes metadata: an in-memory index of this node's pods and of all nodes.
//!
//! The agent sees cgroups and container ids; Kubernetes knows which pod, workload and
//! zone they belong to. This module keeps that knowledge in a [`KubeIndex`] that the
//! agent reads from sync code on its hot path, fed by two `kube::runtime::watcher`s:
//!
//! * pods, restricted server-side to `spec.nodeName=<this node>` so that every agent
//!   of a DaemonSet only receives its own node's share of the cluster's pods;
//! * all nodes, so that peer IPs and pod CIDRs can be mapped to zones.
//!
//! The watchers relist on `410 Gone` and reconnect with backoff on every other error;
//! a relist builds a fresh set and swaps it in whole, so objects deleted while we were
//! disconnected disappear too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Environment variable that the kubelet sets in every container of the cluster; its
/// presence is how `enabled = auto` detects that the agent runs inside Kubernetes.
const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// Environment variable the DaemonSet fills from the downward API (`spec.nodeName`).
const NODE_NAME_ENV: &str = "NODE_NAME";
/// Annotation of a mirror pod holding the UID of the static pod it mirrors; the kubelet
/// names the static pod's cgroup after that UID, not after the mirror pod's own UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Label the Deployment controller puts on a ReplicaSet's pods; the ReplicaSet is named
/// `<deployment>-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Deprecated since 1.17 but still the only zone label on some old or hand-made nodes.
const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// The `[kubernetes]` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Whether to watch the Kubernetes API for pod and node metadata.
    /// Default: unset = auto, on when the environment variable `KUBERNETES_SERVICE_HOST`
    /// is set (we run in a pod) or `api_url` is given.
    pub enabled: Option<bool>,
    /// API server URL, e.g. `http://127.0.0.1:8001` (a `kubectl proxy`), used without
    /// any authentication. Default: empty = in-cluster config: the service account token
    /// and CA under `/var/run/secrets/kubernetes.io/serviceaccount` and the server at
    /// `KUBERNETES_SERVICE_HOST`:`KUBERNETES_SERVICE_PORT`.
    pub api_url: String,
    /// Name of the node the agent runs on; only that node's pods are watched.
    /// Default: empty = the environment variable `NODE_NAME`, which the DaemonSet sets
    /// from the downward API (`fieldRef: spec.nodeName`).
    pub node_name: String,
}

impl KubernetesConfig {
    /// Resolves `enabled = auto` against the process environment.
    pub fn is_enabled(&self) -> bool {
        self.is_enabled_with(std::env::var_os(SERVICE_HOST_ENV).is_some())
    }

    fn is_enabled_with(&self, in_cluster: bool) -> bool {
        self.enabled
            .unwrap_or(in_cluster || !self.api_url.is_empty())
    }

    /// The node whose pods to watch: `node_name`, else `$NODE_NAME`.
    pub fn resolve_node_name(&self) -> Result<String, KubeError> {
        self.resolve_node_name_with(std::env::var(NODE_NAME_ENV).ok())
    }

    fn resolve_node_name_with(&self, env: Option<String>) -> Result<String, KubeError> {
        let name = if self.node_name.is_empty() {
            env.unwrap_or_default()
        } else {
            self.node_name.clone()
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(KubeError::NodeNameEmpty);
        }
        Ok(name.to_owned())
    }

    /// Builds the client configuration: the explicit URL without auth, else in-cluster.
    fn client_config(&self) -> Result<kube::Config, KubeError> {
        if self.api_url.is_empty() {
            return kube::Config::incluster().map_err(|source| KubeError::InCluster { source });
        }
        // The URI type is `http::Uri`; inferring it keeps `http` out of our dependencies.
        let uri = self.api_url.parse().map_err(|e| KubeError::InvalidApiUrl {
            url: self.api_url.clone(),
            source: Box::new(e),
        })?;
        Ok(kube::Config::new(uri))
    }
}

/// Errors of the Kubernetes metadata watcher.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubernetes.node_name is empty: set NODE_NAME from the downward API (fieldRef spec.nodeName)"
    )]
    NodeNameEmpty,
    #[error("invalid kubernetes.api_url {url:?}")]
    InvalidApiUrl {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot load the in-cluster kubernetes config (is the service account token mounted?)"
    )]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("cannot build the kubernetes client")]
    Client {
        #[source]
        source: kube::Error,
    },
    /// A watcher stream with backoff never ends on its own; if one does, it is a bug
    /// worth surfacing rather than silently serving stale metadata.
    #[error("kubernetes {resource} watcher ended unexpectedly")]
    WatcherEnded { resource: &'static str },
}

/// What the agent needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Kind of the workload owning the pod: `Deployment`, `StatefulSet`, `DaemonSet`,
    /// `Job`, `ReplicaSet` (when not from a Deployment), ..., or `Pod` when unowned.
    pub owner_kind: String,
    /// Name of that workload; the pod's own name when unowned.
    pub owner_name: String,
    /// Container id (lowercase hex, without the `containerd://` style scheme) to
    /// container name, for regular, init and ephemeral containers.
    pub containers: HashMap<String, String>,
}

/// What the agent needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Label `topology.kubernetes.io/zone`, else `failure-domain.beta.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `status.addresses` of type `InternalIP`.
    pub internal_ips: Vec<IpAddr>,
    /// `spec.podCIDRs`, else `spec.podCIDR`.
    pub pod_cidrs: Vec<String>,
}

/// The in-memory index. Readers take the read lock of a [`SharedIndex`] briefly;
/// writers convert API objects before taking the write lock.
#[derive(Debug, Default)]
pub struct KubeIndex {
    /// Keyed by the API UID, plus by the static pod UID for mirror pods.
    pods_by_uid: HashMap<String, Arc<PodInfo>>,
    /// API UID of a mirror pod to the static pod UID it is also indexed under, so that
    /// deleting or replacing the mirror pod also drops the alias.
    mirror_aliases: HashMap<String, String>,
    pod_count: usize,
    nodes: BTreeMap<String, NodeInfo>,
    pods_generation: u64,
    nodes_generation: u64,
    /// Pods deleted lately, by UID (and mirror alias), with when: a pod's last
    /// connections close as it goes, and their records are drained after the API has
    /// already said it is gone. They still answer [`KubeIndex::pod`] for
    /// [`DELETED_POD_GRACE`] so those counts keep the pod's labels.
    deleted: HashMap<String, (Arc<PodInfo>, Instant)>,
}

/// How long a deleted pod still labels its connections' last records.
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(60);

/// The handle the agent shares between the watcher task and its readers.
pub type SharedIndex = Arc<RwLock<KubeIndex>>;

impl KubeIndex {
    pub fn new_shared() -> SharedIndex {
        Arc::new(RwLock::new(KubeIndex::default()))
    }

    /// The pod with this UID, as the API server or, for static pods, the kubelet writes
    /// it (lowercase; see [`canonical_pod_uid`] for cgroup path spellings).
    pub fn pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.pods_by_uid.get(uid).cloned()
    }

    /// As [`KubeIndex::pod`], or a pod deleted less than [`DELETED_POD_GRACE`] ago: what
    /// labels a connection's records.
    pub fn pod_or_recently_deleted(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.pod(uid).or_else(|| {
            self.deleted
                .get(uid)
                .filter(|(_, at)| at.elapsed() < DELETED_POD_GRACE)
                .map(|(pod, _)| pod.clone())
        })
    }

    /// Number of pods (mirror aliases not counted).
    pub fn pod_count(&self) -> usize {
        self.pod_count
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Bumped on every change to pods or nodes.
    pub fn generation(&self) -> u64 {
        self.pods_generation + self.nodes_generation
    }

    /// Bumped on every change to pods; unchanged pod updates (status churn that does
    /// not touch what [`PodInfo`] holds) do not bump it.
    pub fn pods_generation(&self) -> u64 {
        self.pods_generation
    }

    /// Bumped on every change to nodes; node heartbeats that leave [`NodeInfo`] as it
    /// was do not bump it, so a zone map keyed on it is rebuilt only when needed.
    pub fn nodes_generation(&self) -> u64 {
        self.nodes_generation
    }

    fn apply_pod(&mut self, info: PodInfo, mirror_uid: Option<String>) {
        let unchanged = self.pods_by_uid.get(&info.uid).is_some_and(|p| **p == info)
            && self.mirror_aliases.get(&info.uid) == mirror_uid.as_ref();
        if unchanged {
            return;
        }
        let uid = info.uid.clone();
        // Drops the previous version and its mirror alias, which may have changed.
        self.remove_pod(&uid);
        let info = Arc::new(info);
        if let Some(alias) = mirror_uid.filter(|a| *a != uid) {
            self.pods_by_uid.insert(alias.clone(), info.clone());
            self.mirror_aliases.insert(uid.clone(), alias);
        }
        self.pods_by_uid.insert(uid, info);
        self.pod_count += 1;
        self.pods_generation += 1;
    }

    fn delete_pod(&mut self, uid: &str) {
        let alias = self.mirror_aliases.get(uid).cloned();
        if let Some(pod) = self.remove_pod(uid) {
            self.remember_deleted(uid, alias, pod);
            self.pods_generation += 1;
        }
    }

    /// Keeps a deleted pod for [`DELETED_POD_GRACE`], and forgets those kept longer
    /// (so the list holds at most the pods deleted within the grace period).
    fn remember_deleted(&mut self, uid: &str, alias: Option<String>, pod: Arc<PodInfo>) {
        let now = Instant::now();
        self.deleted
            .retain(|_, (_, at)| now.duration_since(*at) < DELETED_POD_GRACE);
        if let Some(alias) = alias {
            self.deleted.insert(alias, (pod.clone(), now));
        }
        self.deleted.insert(uid.to_owned(), (pod, now));
    }

    fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let removed = self.pods_by_uid.remove(uid)?;
        if let Some(alias) = self.mirror_aliases.remove(uid) {
            self.pods_by_uid.remove(&alias);
        }
        self.pod_count -= 1;
        Some(removed)
    }

    fn replace_pods(&mut self, pods: Vec<(PodInfo, Option<String>)>) {
        // Pods missing from a relist were deleted while the watch was away: kept for
        // the grace period like any deleted pod (those in the list are found first).
        let known: Vec<(String, Arc<PodInfo>)> = self
            .pods_by_uid
            .iter()
            .filter(|(uid, _)| !self.mirror_aliases.values().any(|a| a == *uid))
            .map(|(uid, pod)| (uid.clone(), pod.clone()))
            .collect();
        for (uid, pod) in known {
            let alias = self.mirror_aliases.get(&uid).cloned();
            self.remember_deleted(&uid, alias, pod);
        }
        self.pods_by_uid.clear();
        self.mirror_aliases.clear();
        self.pod_count = 0;
        for (info, mirror) in pods {
            self.apply_pod(info, mirror);
        }
        // A relist may have changed nothing, but it is rare enough to always count.
        self.pods_generation += 1;
    }

    fn apply_node(&mut self, info: NodeInfo) {
        if self.nodes.get(&info.name) != Some(&info) {
            self.nodes.insert(info.name.clone(), info);
            self.nodes_generation += 1;
        }
    }

    fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.nodes_generation += 1;
        }
    }

    fn replace_nodes(&mut self, nodes: Vec<NodeInfo>) {
        let fresh: BTreeMap<_, _> = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        if fresh != self.nodes {
            self.nodes = fresh;
            self.nodes_generation += 1;
        }
    }
}

/// Turns a pod UID as spelled in a cgroup path into the index's key: the systemd cgroup
/// driver writes `pod1234_abcd_...`, the cgroupfs driver and the API `1234-abcd-...`.
pub fn canonical_pod_uid(uid: &str) -> String {
    uid.to_ascii_lowercase().replace('_', "-")
}

/// Counters the agent exports as metrics.
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Watch or list failures (each one is retried with backoff).
    pub watch_errors: AtomicU64,
    /// Pods currently indexed (this node's).
    pub pods: AtomicU64,
    /// Nodes currently indexed.
    pub nodes: AtomicU64,
}

/// Strips the runtime scheme (`containerd://`, `cri-o://`, `docker://`, ...) from a
/// `containerStatuses[].containerID`; `None` while the container has not been created.
pub fn parse_container_id(raw: &str) -> Option<String> {
    let id = raw.split_once("://").map_or(raw, |(_, id)| id).trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(id.to_ascii_lowercase())
}

/// The workload owning a pod: `(kind, name)`.
fn resolve_owner(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    let pod_name = meta.name.clone().unwrap_or_default();
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
    else {
        return ("Pod".to_owned(), pod_name);
    };
    if owner.kind == "ReplicaSet" {
        // Watching ReplicaSets just to find their Deployment would cost a cluster-wide
        // watch; the Deployment controller's naming convention gives the same answer.
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL));
        let deployment = hash.filter(|h| !h.is_empty()).and_then(|hash| {
            owner
                .name
                .strip_suffix(hash.as_str())
                .and_then(|n| n.strip_suffix('-'))
                .filter(|n| !n.is_empty())
        });
        if let Some(deployment) = deployment {
            return ("Deployment".to_owned(), deployment.to_owned());
        }
    }
    (owner.kind.clone(), owner.name.clone())
}

/// Converts a pod; `None` if it has no UID (never the case for API server output).
pub fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let uid = meta.uid.as_deref().filter(|u| !u.is_empty())?;
    let (owner_kind, owner_name) = resolve_owner(pod);
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let all = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for cs in all.into_iter().flatten().flatten() {
            if let Some(id) = cs.container_id.as_deref().and_then(parse_container_id) {
                containers.insert(id, cs.name.clone());
            }
        }
    }
    Some(PodInfo {
        uid: uid.to_ascii_lowercase(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        owner_kind,
        owner_name,
        containers,
    })
}

/// For a mirror pod, the UID of the static pod it mirrors (the one in its cgroup path).
pub fn mirror_uid(pod: &Pod) -> Option<String> {
    let value = pod.metadata.annotations.as_ref()?.get(MIRROR_ANNOTATION)?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_ascii_lowercase())
}

/// Converts a node.
pub fn node_info(node: &Node) -> NodeInfo {
    let labels = node.metadata.labels.as_ref();
    let zone = labels
        .and_then(|l| l.get(ZONE_LABEL).or_else(|| l.get(LEGACY_ZONE_LABEL)))
        .filter(|z| !z.is_empty())
        .cloned();
    let internal_ips = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let pod_cidrs = node
        .spec
        .as_ref()
        .map(|spec| match &spec.pod_cidrs {
            Some(cidrs) if !cidrs.is_empty() => cidrs.clone(),
            _ => spec
                .pod_cidr
                .iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect(),
        })
        .unwrap_or_default();
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone,
        internal_ips,
        pod_cidrs,
    }
}

/// How one watched resource maps onto the index.
trait Indexed:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    /// Converted form, computed before taking the write lock.
    type Info: Send;
    const NAME: &'static str;
    fn info(&self) -> Option<Self::Info>;
    fn apply(index: &mut KubeIndex, info: Self::Info);
    fn delete(index: &mut KubeIndex, obj: &Self);
    fn replace(index: &mut KubeIndex, infos: Vec<Self::Info>);
}

impl Indexed for Pod {
    type Info = (PodInfo, Option<String>);
    const NAME: &'static str = "pod";
    fn info(&self) -> Option<Self::Info> {
        Some((pod_info(self)?, mirror_uid(self)))
    }
    fn apply(index: &mut KubeIndex, info: Self::Info) {
        index.apply_pod(info.0, info.1);
    }
    fn delete(index: &mut KubeIndex, obj: &Self) {
        if let Some(uid) = &obj.metadata.uid {
            index.delete_pod(&uid.to_ascii_lowercase());
        }
    }
    fn replace(index: &mut KubeIndex, infos: Vec<Self::Info>) {
        index.replace_pods(infos);
    }
}

impl Indexed for Node {
    type Info = NodeInfo;
    const NAME: &'static str = "node";
    fn info(&self) -> Option<Self::Info> {
        Some(node_info(self)).filter(|n| !n.name.is_empty())
    }
    fn apply(index: &mut KubeIndex, info: Self::Info) {
        index.apply_node(info);
    }
    fn delete(index: &mut KubeIndex, obj: &Self) {
        if let Some(name) = &obj.metadata.name {
            index.delete_node(name);
        }
    }
    fn replace(index: &mut KubeIndex, infos: Vec<Self::Info>) {
        index.replace_nodes(infos);
    }
}

/// Applies watcher events to the index; holds the relist buffer between `Init` and
/// `InitDone` so that a relist replaces the old set atomically.
struct EventSink<K: Indexed> {
    index: SharedIndex,
    relist: Option<Vec<K::Info>>,
}

impl<K: Indexed> EventSink<K> {
    fn new(index: SharedIndex) -> Self {
        EventSink {
            index,
            relist: None,
        }
    }

    fn handle(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => {
                if let Some(info) = obj.info() {
                    self.relist.get_or_insert_with(Vec::new).push(info);
                }
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                K::replace(&mut self.write(), fresh);
            }
            watcher::Event::Apply(obj) => {
                if let Some(info) = obj.info() {
                    K::apply(&mut self.write(), info);
                }
            }
            watcher::Event::Delete(obj) => K::delete(&mut self.write(), &obj),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KubeIndex> {
        // A reader panicking while holding the lock cannot leave the index half
        // updated (readers do not write), so poisoning is safe to ignore.
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one watcher forever, applying its events to the index.
async fn watch<K: Indexed>(
    api: Api<K>,
    config: watcher::Config,
    index: SharedIndex,
    stats: Arc<KubeStats>,
) -> Result<(), KubeError> {
    let mut sink = EventSink::<K>::new(index.clone());
    // `default_backoff` retries every error (after a 410 the watcher itself relists).
    let mut stream = pin!(watcher(api, config).default_backoff());
    let mut failing = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing > 0 {
                    log::info!(
                        "kubernetes {} watch recovered after {failing} errors",
                        K::NAME
                    );
                    failing = 0;
                }
                sink.handle(event);
                let idx = index.read().unwrap_or_else(|e| e.into_inner());
                stats.pods.store(idx.pod_count() as u64, Ordering::Relaxed);
                stats
                    .nodes
                    .store(idx.node_count() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                // One warning per failure streak: an unreachable API server would
                // otherwise log every backoff step.
                if failing == 0 {
                    log::warn!("kubernetes {} watch failed, retrying: {err}", K::NAME);
                } else {
                    log::debug!("kubernetes {} watch failed again: {err}", K::NAME);
                }
                failing += 1;
            }
        }
    }
    Err(KubeError::WatcherEnded { resource: K::NAME })
}

/// Watches this node's pods and all nodes into `index` until an unrecoverable error.
/// Transient API errors are retried forever and counted in `stats.watch_errors`.
pub async fn run(
    config: &KubernetesConfig,
    index: SharedIndex,
    stats: Arc<KubeStats>,
) -> Result<(), KubeError> {
    let node_name = config.resolve_node_name()?;
    let client =
        Client::try_from(config.client_config()?).map_err(|source| KubeError::Client { source })?;
    log::info!("watching kubernetes pods of node {node_name:?} and all nodes");

    let pods = watch::<Pod>(
        Api::all(client.clone()),
        watcher_config().fields(&format!("spec.nodeName={node_name}")),
        index.clone(),
        stats.clone(),
    );
    let nodes = watch::<Node>(Api::all(client), watcher_config(), index, stats);
    tokio::try_join!(pods, nodes).map(|_| ())
}

/// Spawns [`run`] on the current tokio runtime.
pub fn spawn(
    config: KubernetesConfig,
    index: SharedIndex,
    stats: Arc<KubeStats>,
) -> tokio::task::JoinHandle<Result<(), KubeError>> {
    tokio::spawn(async move { run(&config, index, stats).await })
}

fn watcher_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    // With a page limit kube drops `resourceVersion=0`, forcing a quorum read from etcd;
    // every agent of a DaemonSet relisting at once must instead be served from the API
    // server's watch cache, which only `resourceVersion=0` without a limit gets (as
    // client-go's reflector does).
    config.page_size = None;
    config
}

/// The index as the identity resolver reads it: pod labels by the cgroup's pod UID and
/// container id.
pub struct KubePods(pub SharedIndex);

impl super::identity::PodDirectory for KubePods {
    fn pod_labels(
        &self,
        pod_uid: &str,
        container_id: Option<&str>,
    ) -> Option<crate::metadata::workload::PodLabels> {
        use crate::metadata::workload::Name;
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        let pod = index.pod_or_recently_deleted(&canonical_pod_uid(pod_uid))?;
        let container = container_id
            .and_then(|id| pod.containers.get(id))
            .map(String::as_str)
            .unwrap_or("");
        Some(crate::metadata::workload::PodLabels {
            namespace: Name::new(&pod.namespace),
            pod: Name::new(&pod.name),
            container: Name::new(container),
            owner: Name::new(&pod.owner_name),
        })
    }

    fn generation(&self) -> u64 {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pods_generation()
    }
}

/// How long start-up waits for this node's object (and its zone label) before asking
/// the next zone source.
const NODE_LABEL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the zone map's Kubernetes nodes and this node's zone (`node_name`'s label) in
/// step with the index, checking once a second.
pub async fn follow(
    node_name: String,
    local_zone: super::local_zone::LocalZoneSettings,
    index: SharedIndex,
    zones: super::identity::SharedZones,
    report: super::local_zone::ZoneReport,
) {
    let started = std::time::Instant::now();
    let mut seen_generation = None;
    let mut local_label: Option<Option<String>> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (generation, nodes, label) = {
            let index = index.read().unwrap_or_else(|e| e.into_inner());
            let generation = index.nodes_generation();
            let nodes: Vec<NodeInfo> = if seen_generation != Some(generation) {
                index.nodes().cloned().collect()
            } else {
                Vec::new()
            };
            let label = index.node(&node_name).map(|n| n.zone.clone());
            (generation, nodes, label)
        };
        if seen_generation != Some(generation) {
            seen_generation = Some(generation);
            zones.update(|z| {
                z.map.clear_nodes();
                for node in &nodes {
                    let Some(zone) = &node.zone else { continue };
                    if let Err(e) = z.map.add_node(&node.internal_ips, &node.pod_cidrs, zone) {
                        log::warn!("node {}: {}", node.name, crate::error_chain(&e));
                    }
                }
            });
        }
        // This node's zone: decided once the node shows up (or the wait is over), and
        // again whenever its label changes.
        let decided = local_label.is_some();
        let label_now = label.clone().flatten();
        let changed = decided && local_label.as_ref() != Some(&label_now);
        if (!decided && (label.is_some() || started.elapsed() >= NODE_LABEL_WAIT)) || changed {
            if !decided && label.is_none() {
                log::warn!(
                    "node {node_name:?} not seen in the Kubernetes API within {NODE_LABEL_WAIT:?}: zone from the next source"
                );
            }
            local_label = Some(label_now.clone());
            super::local_zone::resolve_with_label(&local_zone, label_now, &zones, &report).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod fixture")
    }

    fn owned_pod(owner: Option<(&str, &str)>, labels: serde_json::Value) -> Pod {
        let refs = match owner {
            Some((kind, name)) => json!([
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "unrelated", "uid": "u0"},
                {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u1", "controller": true}
            ]),
            None => json!([]),
        };
        pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p-1", "namespace": "ns", "uid": "UID-1", "labels": labels, "ownerReferences": refs},
        }))
    }

    fn owner_of(owner: Option<(&str, &str)>, labels: serde_json::Value) -> (String, String) {
        let info = pod_info(&owned_pod(owner, labels)).unwrap();
        (info.owner_kind, info.owner_name)
    }

    fn pair(kind: &str, name: &str) -> (String, String) {
        (kind.to_owned(), name.to_owned())
    }

    #[test]
    fn container_ids() {
        let id = "3f4e1a0c9d2b";
        for scheme in ["containerd://", "cri-o://", "docker://", ""] {
            assert_eq!(
                parse_container_id(&format!("{scheme}{id}")).as_deref(),
                Some(id)
            );
        }
        assert_eq!(
            parse_container_id("containerd://ABCdef").as_deref(),
            Some("abcdef")
        );
        assert_eq!(parse_container_id(""), None);
        assert_eq!(parse_container_id("containerd://"), None);
        assert_eq!(parse_container_id("containerd://not-hex"), None);
    }

    #[test]
    fn owners() {
        let hash = json!({"pod-template-hash": "7d9f8b6c5"});
        assert_eq!(
            owner_of(Some(("ReplicaSet", "web-7d9f8b6c5")), hash.clone()),
            pair("Deployment", "web")
        );
        assert_eq!(
            owner_of(Some(("ReplicaSet", "web-7d9f8b6c5")), json!({})),
            pair("ReplicaSet", "web-7d9f8b6c5")
        );
        // A hash label that does not match the ReplicaSet's name keeps the ReplicaSet.
        assert_eq!(
            owner_of(Some(("ReplicaSet", "web-other")), hash.clone()),
            pair("ReplicaSet", "web-other")
        );
        assert_eq!(
            owner_of(Some(("ReplicaSet", "-7d9f8b6c5")), hash),
            pair("ReplicaSet", "-7d9f8b6c5")
        );
        assert_eq!(
            owner_of(Some(("StatefulSet", "db")), json!({})),
            pair("StatefulSet", "db")
        );
        assert_eq!(
            owner_of(Some(("DaemonSet", "agent")), json!({})),
            pair("DaemonSet", "agent")
        );
        assert_eq!(
            owner_of(Some(("Job", "backup-29000")), json!({})),
            pair("Job", "backup-29000")
        );
        assert_eq!(owner_of(None, json!({})), pair("Pod", "p-1"));
    }

    #[test]
    fn owner_without_controller_flag_is_first_reference() {
        let p = pod(
            json!({"metadata": {"name": "p", "uid": "u", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "n"},
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s", "uid": "s"}
            ]}}),
        );
        let info = pod_info(&p).unwrap();
        assert_eq!(
            (info.owner_kind.as_str(), info.owner_name.as_str()),
            ("Node", "node-a")
        );
    }

    fn pod_with_containers(uid: &str, ids: &[(&str, &str)], mirror: Option<&str>) -> Pod {
        let statuses: Vec<_> = ids
            .iter()
            .map(|(name, id)| json!({"name": name, "containerID": id, "image": "i", "imageID": "", "ready": true, "restartCount": 0}))
            .collect();
        let annotations = match mirror {
            Some(m) => json!({MIRROR_ANNOTATION: m, "kubernetes.io/config.source": "file"}),
            None => json!({}),
        };
        pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p-{uid}"), "namespace": "kube-system", "uid": uid, "annotations": annotations},
            "status": {
                "containerStatuses": statuses,
                "initContainerStatuses": [{"name": "init", "containerID": "cri-o://AA00", "image": "i", "imageID": "", "ready": false, "restartCount": 0}],
                "ephemeralContainerStatuses": [{"name": "debug", "containerID": "docker://bb11", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
                                               {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0}]
            }
        }))
    }

    #[test]
    fn containers_of_all_kinds() {
        let info = pod_info(&pod_with_containers(
            "u1",
            &[("app", "containerd://cc22"), ("side", "containerd://dd33")],
            None,
        ))
        .unwrap();
        let want: HashMap<String, String> = [
            ("cc22", "app"),
            ("dd33", "side"),
            ("aa00", "init"),
            ("bb11", "debug"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(info.containers, want);
    }

    #[test]
    fn mirror_pods_are_indexed_under_both_uids() {
        let mut index = KubeIndex::default();
        let mirror = pod_with_containers(
            "api-uid",
            &[("etcd", "containerd://ee")],
            Some("0123456789abcdef0123456789abcdef"),
        );
        Pod::apply(&mut index, mirror.info().unwrap());
        assert_eq!(index.pod("api-uid").unwrap().name, "p-api-uid");
        assert_eq!(
            index.pod("0123456789abcdef0123456789abcdef").unwrap().uid,
            "api-uid"
        );
        assert_eq!(index.pod_count(), 1);
        Pod::delete(&mut index, &mirror);
        assert!(index.pod("0123456789abcdef0123456789abcdef").is_none());
        assert!(index.pod("api-uid").is_none());
        assert_eq!(index.pod_count(), 0);
        // Records drained after the deletion still get the pod's labels, by either UID.
        for uid in ["api-uid", "0123456789abcdef0123456789abcdef"] {
            assert_eq!(
                index.pod_or_recently_deleted(uid).map(|p| p.name.clone()),
                Some("p-api-uid".to_owned()),
                "{uid} within the grace period"
            );
        }
    }

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).expect("node fixture")
    }

    #[test]
    fn node_fields() {
        let n = node(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "labels": {ZONE_LABEL: "eu-1a", LEGACY_ZONE_LABEL: "old"}},
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.0.10"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "Hostname", "address": "node-a"},
                {"type": "InternalIP", "address": "fd00::10"}
            ]}
        }));
        let info = node_info(&n);
        assert_eq!(info.name, "node-a");
        assert_eq!(info.zone.as_deref(), Some("eu-1a"));
        assert_eq!(
            info.internal_ips,
            vec![
                "192.168.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert_eq!(info.pod_cidrs, vec!["10.0.1.0/24", "fd00:1::/64"]);

        let legacy = node(
            json!({"metadata": {"name": "b", "labels": {LEGACY_ZONE_LABEL: "old"}}, "spec": {"podCIDR": "10.0.2.0/24"}}),
        );
        let info = node_info(&legacy);
        assert_eq!(info.zone.as_deref(), Some("old"));
        assert_eq!(info.pod_cidrs, vec!["10.0.2.0/24"]);
        assert!(info.internal_ips.is_empty());

        let bare = node_info(&node(json!({"metadata": {"name": "c"}})));
        assert_eq!((bare.zone, bare.pod_cidrs.len()), (None, 0));
    }

    fn simple_pod(uid: &str, container: &str) -> Pod {
        pod_with_containers(uid, &[("app", container)], None)
    }

    #[test]
    fn apply_delete_and_relist_swap() {
        let shared = KubeIndex::new_shared();
        let mut sink = EventSink::<Pod>::new(shared.clone());
        let generation = || shared.read().unwrap().pods_generation();

        sink.handle(watcher::Event::Init);
        sink.handle(watcher::Event::InitApply(simple_pod(
            "a",
            "containerd://01",
        )));
        sink.handle(watcher::Event::InitApply(simple_pod(
            "b",
            "containerd://02",
        )));
        // Nothing is visible until the relist is complete.
        assert!(shared.read().unwrap().pod("a").is_none());
        sink.handle(watcher::Event::InitDone);
        assert_eq!(shared.read().unwrap().pod_count(), 2);

        let g = generation();
        sink.handle(watcher::Event::Apply(simple_pod("a", "containerd://01")));
        assert_eq!(
            generation(),
            g,
            "an unchanged pod must not bump the generation"
        );
        sink.handle(watcher::Event::Apply(simple_pod("a", "containerd://03")));
        assert!(generation() > g);
        assert!(shared
            .read()
            .unwrap()
            .pod("a")
            .unwrap()
            .containers
            .contains_key("03"));
        sink.handle(watcher::Event::Apply(simple_pod("c", "containerd://04")));
        sink.handle(watcher::Event::Delete(simple_pod("b", "containerd://02")));
        assert!(shared.read().unwrap().pod("b").is_none());
        assert_eq!(shared.read().unwrap().pod_count(), 2);

        // A relist without "a" (deleted while disconnected) drops it at InitDone.
        sink.handle(watcher::Event::Init);
        sink.handle(watcher::Event::InitApply(simple_pod(
            "c",
            "containerd://04",
        )));
        assert!(shared.read().unwrap().pod("a").is_some());
        sink.handle(watcher::Event::InitDone);
        let index = shared.read().unwrap();
        assert!(index.pod("a").is_none());
        assert!(index.pod("c").is_some());
        assert_eq!(index.pod_count(), 1);
        // Deleted, by an event or a relist: still labels records for the grace period.
        assert!(index.pod_or_recently_deleted("a").is_some());
        assert!(index.pod_or_recently_deleted("b").is_some());
        assert!(index.pod_or_recently_deleted("nosuch").is_none());
    }

    #[test]
    fn node_generation_only_moves_on_change() {
        let shared = KubeIndex::new_shared();
        let mut sink = EventSink::<Node>::new(shared.clone());
        let a = node(json!({"metadata": {"name": "a", "labels": {ZONE_LABEL: "z1"}}}));
        let b = node(json!({"metadata": {"name": "b", "labels": {ZONE_LABEL: "z2"}}}));
        sink.handle(watcher::Event::Init);
        sink.handle(watcher::Event::InitApply(a.clone()));
        sink.handle(watcher::Event::InitApply(b.clone()));
        sink.handle(watcher::Event::InitDone);
        let g = shared.read().unwrap().nodes_generation();
        assert_eq!(shared.read().unwrap().nodes().count(), 2);
        sink.handle(watcher::Event::Apply(a.clone()));
        sink.handle(watcher::Event::Init);
        sink.handle(watcher::Event::InitApply(a.clone()));
        sink.handle(watcher::Event::InitApply(b.clone()));
        sink.handle(watcher::Event::InitDone);
        assert_eq!(shared.read().unwrap().nodes_generation(), g);
        sink.handle(watcher::Event::Delete(b));
        let index = shared.read().unwrap();
        assert!(index.nodes_generation() > g);
        assert_eq!(index.node("a").unwrap().zone.as_deref(), Some("z1"));
        assert!(index.node("b").is_none());
        assert_eq!(index.pods_generation(), 0);
    }

    #[test]
    fn config_defaults_and_node_name() {
        let c: KubernetesConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, KubernetesConfig::default());
        assert!(!c.is_enabled_with(false));
        assert!(c.is_enabled_with(true));
        let with_url = KubernetesConfig {
            api_url: "http://127.0.0.1:1".into(),
            ..c.clone()
        };
        assert!(with_url.is_enabled_with(false));
        let off = KubernetesConfig {
            enabled: Some(false),
            ..with_url
        };
        assert!(!off.is_enabled_with(true));
        assert!(serde_json::from_value::<KubernetesConfig>(json!({"nodename": "x"})).is_err());

        assert!(matches!(
            c.resolve_node_name_with(None),
            Err(KubeError::NodeNameEmpty)
        ));
        assert!(matches!(
            c.resolve_node_name_with(Some(" ".into())),
            Err(KubeError::NodeNameEmpty)
        ));
        assert_eq!(c.resolve_node_name_with(Some("n1".into())).unwrap(), "n1");
        let named = KubernetesConfig {
            node_name: "n2".into(),
            ..c
        };
        assert_eq!(
            named.resolve_node_name_with(Some("n1".into())).unwrap(),
            "n2"
        );
        assert!(KubeError::NodeNameEmpty
            .to_string()
            .contains("fieldRef spec.nodeName"));
    }

    #[test]
    fn cgroup_uid_spellings() {
        assert_eq!(canonical_pod_uid("1A2B_3c4d"), "1a2b-3c4d");
    }
}
