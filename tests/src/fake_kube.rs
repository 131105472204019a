//! A stand-in Kubernetes API server for integration tests.
//!
//! It serves just enough of the core/v1 API over plain HTTP/1.1 on 127.0.0.1 for a real
//! client (kube-rs's `watcher`) to list and watch pods and nodes: `PodList`/`NodeList`
//! lists, chunked watch streams of newline-delimited events starting after the
//! requested `resourceVersion`, `fieldSelector` filtering (with the API server's
//! ADDED/DELETED translation when an object starts or stops matching), bookmarks,
//! `sendInitialEvents`, `timeoutSeconds`, and `410 Expired` after a compaction.
//!
//! Tests change the state through [`FakeKube`] and can inject faults: closed watch
//! streams ([`FakeKube::close_watches`]), expired resource versions
//! ([`FakeKube::compact`]) and failing requests ([`FakeKube::fail_next_requests`]).
//!
//! Threads and std only (plus serde_json): one acceptor thread, one thread per
//! connection; dropping the [`FakeKube`] stops and joins them.

#![allow(dead_code)] // Each test binary uses a different part of the API.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How often an idle watch stream carries a bookmark (the API server's is about a
/// minute; shorter here so tests exercise bookmark handling).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);
/// How often blocked threads wake up to look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// The first resourceVersion; real ones are large opaque numbers.
const FIRST_RESOURCE_VERSION: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pod,
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
        }
    }
}

/// One change, kept so that watches can resume from any later resourceVersion.
struct Change {
    rv: u64,
    kind: Kind,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    verb: &'static str,
    old: Option<Value>,
    new: Value,
}

struct State {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    nodes: BTreeMap<String, Value>,
    history: Vec<Change>,
    /// Watches starting before this resourceVersion get `410 Expired`.
    compacted_rv: u64,
    /// Bumped to end every open watch stream.
    watch_epoch: u64,
    /// While set, watch streams send nothing (not even bookmarks).
    hold: bool,
    fail_next: u32,
    requests: Vec<String>,
    gone_sent: u64,
    open_watches: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the whole fake down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeKube {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake kube listener");
        let addr = listener.local_addr().expect("fake kube local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: FIRST_RESOURCE_VERSION,
                pods: BTreeMap::new(),
                nodes: BTreeMap::new(),
                history: Vec::new(),
                compacted_rv: 0,
                watch_epoch: 0,
                hold: false,
                fail_next: 0,
                requests: Vec::new(),
                gone_sent: 0,
                open_watches: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || accept_loop(listener, shared))
        };
        FakeKube {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a pod (its `metadata.namespace` and `metadata.name` must be new).
    pub fn add_pod(&self, pod: Value) {
        self.upsert(Kind::Pod, pod, "ADDED");
    }

    /// Replaces an existing pod (matched by namespace and name).
    pub fn update_pod(&self, pod: Value) {
        self.upsert(Kind::Pod, pod, "MODIFIED");
    }

    /// Deletes a pod; returns whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        self.delete(Kind::Pod, |s| s.pods.remove(&key))
    }

    /// Creates a node.
    pub fn add_node(&self, node: Value) {
        self.upsert(Kind::Node, node, "ADDED");
    }

    /// Replaces an existing node (matched by name).
    pub fn update_node(&self, node: Value) {
        self.upsert(Kind::Node, node, "MODIFIED");
    }

    /// Deletes a node; returns whether it existed.
    pub fn delete_node(&self, name: &str) -> bool {
        self.delete(Kind::Node, |s| s.nodes.remove(name))
    }

    /// Request lines seen so far, e.g. `GET /api/v1/pods?fieldSelector=...`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// How many `410 Expired` watch errors were sent.
    pub fn gone_sent(&self) -> u64 {
        self.shared.lock().gone_sent
    }

    /// Ends every open watch stream cleanly, as an API server restart or a load
    /// balancer idle timeout would; clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.lock().watch_epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the change history, as etcd compaction does, and ends every open watch
    /// stream. The resourceVersion moves on (other objects of a real cluster change all
    /// the time), so every client's next watch gets `410 Expired` and has to relist.
    pub fn compact(&self) {
        let mut s = self.shared.lock();
        s.rv += 1;
        s.compacted_rv = s.rv;
        s.history.clear();
        s.watch_epoch += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// While held, watch streams deliver nothing, so a test can change state that
    /// clients will only learn about by relisting (hold, change, [`compact`], release).
    ///
    /// [`compact`]: FakeKube::compact
    pub fn hold_watches(&self, hold: bool) {
        self.shared.lock().hold = hold;
        self.shared.changed.notify_all();
    }

    /// Answers the next `n` API requests with `500 InternalError`.
    pub fn fail_next_requests(&self, n: u32) {
        self.shared.lock().fail_next = n;
    }

    fn upsert(&self, kind: Kind, mut object: Value, verb: &'static str) {
        let mut s = self.shared.lock();
        let old = match kind {
            Kind::Pod => s.pods.get(&pod_key(&object)).cloned(),
            Kind::Node => s.nodes.get(str_at(&object, "/metadata/name")).cloned(),
        };
        match (verb, &old) {
            ("ADDED", Some(_)) => panic!("fake kube: {} already exists", describe(&object)),
            ("MODIFIED", None) => panic!("fake kube: {} does not exist", describe(&object)),
            _ => {}
        }
        s.rv += 1;
        let rv = s.rv;
        let created = old
            .as_ref()
            .and_then(|o| o.pointer("/metadata/creationTimestamp").cloned())
            .unwrap_or_else(|| json!(timestamp()));
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("object without metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), created);
        match kind {
            Kind::Pod => {
                s.pods.insert(pod_key(&object), object.clone());
            }
            Kind::Node => {
                let name = str_at(&object, "/metadata/name").to_owned();
                s.nodes.insert(name, object.clone());
            }
        }
        s.history.push(Change {
            rv,
            kind,
            verb,
            old,
            new: object,
        });
        drop(s);
        self.shared.changed.notify_all();
    }

    fn delete(&self, kind: Kind, remove: impl FnOnce(&mut State) -> Option<Value>) -> bool {
        let mut s = self.shared.lock();
        let Some(mut object) = remove(&mut s) else {
            return false;
        };
        s.rv += 1;
        let rv = s.rv;
        // Like the API server, the deleted object carries the deletion's resourceVersion.
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push(Change {
            rv,
            kind,
            verb: "DELETED",
            old: Some(object.clone()),
            new: object,
        });
        drop(s);
        self.shared.changed.notify_all();
        true
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wakes the acceptor blocked in accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

fn pod_key(pod: &Value) -> (String, String) {
    (
        str_at(pod, "/metadata/namespace").to_owned(),
        str_at(pod, "/metadata/name").to_owned(),
    )
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn describe(object: &Value) -> String {
    format!(
        "{} {}/{}",
        str_at(object, "/kind"),
        str_at(object, "/metadata/namespace"),
        str_at(object, "/metadata/name")
    )
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let handle = {
            let shared = shared.clone();
            thread::spawn(move || serve_connection(conn, &shared))
        };
        let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }
}

/// A parsed request target.
struct Request {
    line: String,
    path: String,
    query: BTreeMap<String, String>,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// Serves HTTP/1.1 requests on one keep-alive connection until it closes.
fn serve_connection(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(POLL));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_nodelay(true);
    let mut pending = Vec::new();
    loop {
        let Some(head) = read_head(&mut conn, &mut pending, shared) else {
            return;
        };
        let Some(request) = parse_head(&head, &mut conn, &mut pending, shared) else {
            let _ = respond(
                &mut conn,
                400,
                &status_json(400, "BadRequest", "malformed request"),
            );
            return;
        };
        let keep_alive = match handle(&mut conn, &request, shared) {
            Ok(keep_alive) => keep_alive,
            Err(_) => return,
        };
        if !keep_alive {
            return;
        }
    }
}

/// Reads up to the blank line ending the request head; `None` on EOF or stop.
fn read_head(conn: &mut TcpStream, pending: &mut Vec<u8>, shared: &Shared) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            return Some(head);
        }
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the request line and skips any body (none is expected for GET).
fn parse_head(
    head: &str,
    conn: &mut TcpStream,
    pending: &mut Vec<u8>,
    shared: &Shared,
) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let body_len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut buf = [0u8; 4096];
    while pending.len() < body_len && !shared.stop.load(Ordering::SeqCst) {
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    pending.drain(..body_len.min(pending.len()));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        line: format!("{method} {target}"),
        path: percent_decode(path),
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which collection a path names: `(kind, namespace)`.
fn route(path: &str) -> Option<(Kind, Option<&str>)> {
    let rest = path.strip_prefix("/api/v1/")?;
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["pods"] => Some((Kind::Pod, None)),
        ["namespaces", ns, "pods"] => Some((Kind::Pod, Some(ns))),
        ["nodes"] => Some((Kind::Node, None)),
        _ => None,
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value` or `field!=value` terms.
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(kind: Kind, raw: Option<&str>) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in raw.unwrap_or("").split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'"));
            };
            let supported = match kind {
                Kind::Pod => &[
                    "metadata.name",
                    "metadata.namespace",
                    "spec.nodeName",
                    "status.phase",
                ][..],
                Kind::Node => &["metadata.name", "spec.unschedulable"][..],
            };
            if !supported.contains(&field) {
                // The API server's wording for an unsupported field.
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}

/// Handles one request; returns whether the connection may be reused.
fn handle(conn: &mut TcpStream, req: &Request, shared: &Shared) -> std::io::Result<bool> {
    let mut s = shared.lock();
    s.requests.push(req.line.clone());
    if s.fail_next > 0 {
        s.fail_next -= 1;
        drop(s);
        respond(
            conn,
            500,
            &status_json(500, "InternalError", "fake kube: injected failure"),
        )?;
        return Ok(true);
    }
    drop(s);
    let Some((kind, namespace)) = route(&req.path) else {
        let msg = format!(
            "the server could not find the requested resource ({})",
            req.path
        );
        respond(conn, 404, &status_json(404, "NotFound", &msg))?;
        return Ok(true);
    };
    if req.param("labelSelector").is_some_and(|l| !l.is_empty()) {
        respond(
            conn,
            400,
            &status_json(
                400,
                "BadRequest",
                "fake kube: labelSelector is not supported",
            ),
        )?;
        return Ok(true);
    }
    if req.param("continue").is_some() {
        // We never hand out continue tokens, so any token is one that expired.
        let msg = "The provided continue parameter is too old to display a consistent list result.";
        respond(conn, 410, &status_json(410, "Expired", msg))?;
        return Ok(true);
    }
    let selector = match FieldSelector::parse(kind, req.param("fieldSelector")) {
        Ok(sel) => sel,
        Err(msg) => {
            respond(conn, 400, &status_json(400, "BadRequest", &msg))?;
            return Ok(true);
        }
    };
    let in_scope = |o: &Value| {
        selector.matches(o) && namespace.is_none_or(|ns| str_at(o, "/metadata/namespace") == ns)
    };
    if matches!(req.param("watch"), Some("true" | "1")) {
        watch(conn, req, kind, &in_scope, shared)?;
        return Ok(false);
    }
    let s = shared.lock();
    let items: Vec<Value> = list_objects(&s, kind)
        .into_iter()
        .filter(|o| in_scope(o))
        .map(|mut o| {
            // List items of typed lists carry no kind/apiVersion in real responses.
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let body = json!({
        "kind": format!("{}List", kind.name()),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    });
    drop(s);
    respond(conn, 200, &body)?;
    Ok(true)
}

fn list_objects(s: &State, kind: Kind) -> Vec<Value> {
    match kind {
        Kind::Pod => s.pods.values().cloned().collect(),
        Kind::Node => s.nodes.values().cloned().collect(),
    }
}

/// Streams watch events until `timeoutSeconds`, a fault injection or shutdown.
fn watch(
    conn: &mut TcpStream,
    req: &Request,
    kind: Kind,
    in_scope: &dyn Fn(&Value) -> bool,
    shared: &Shared,
) -> std::io::Result<()> {
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let initial_events = req.param("sendInitialEvents") == Some("true");
    let requested_rv = req.param("resourceVersion").unwrap_or("");

    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    let mut s = shared.lock();
    let epoch = s.watch_epoch;
    // resourceVersion "" or "0" starts with the current state as ADDED events.
    let mut sent_rv = match requested_rv {
        "" | "0" => {
            let events: Vec<Value> = list_objects(&s, kind)
                .into_iter()
                .filter(|o| in_scope(o))
                .map(|o| json!({"type": "ADDED", "object": o}))
                .collect();
            let rv = s.rv;
            drop(s);
            for event in events {
                write_chunk(conn, &event)?;
            }
            if initial_events && bookmarks {
                let mut mark = bookmark(kind, rv);
                mark["object"]["metadata"]["annotations"] =
                    json!({"k8s.io/initial-events-end": "true"});
                write_chunk(conn, &mark)?;
            }
            s = shared.lock();
            rv
        }
        rv => {
            let Ok(rv) = rv.parse::<u64>() else {
                drop(s);
                let msg = format!("invalid resource version: {rv}");
                write_chunk(
                    conn,
                    &json!({"type": "ERROR", "object": status_json(400, "BadRequest", &msg)}),
                )?;
                return finish_chunks(conn);
            };
            if rv < s.compacted_rv {
                s.gone_sent += 1;
                let msg = format!("too old resource version: {rv} ({})", s.compacted_rv);
                drop(s);
                write_chunk(
                    conn,
                    &json!({"type": "ERROR", "object": status_json(410, "Expired", &msg)}),
                )?;
                return finish_chunks(conn);
            }
            rv
        }
    };
    s.open_watches += 1;
    let mut last_write = Instant::now();
    let result = loop {
        if shared.stop.load(Ordering::SeqCst)
            || s.watch_epoch != epoch
            || Instant::now() >= deadline
        {
            break Ok(());
        }
        let mut out = Vec::new();
        if !s.hold {
            for change in s
                .history
                .iter()
                .filter(|c| c.kind == kind && c.rv > sent_rv)
            {
                if let Some(event) = translate(change, in_scope) {
                    out.push(event);
                }
            }
            if s.rv > sent_rv
                && out.is_empty()
                && bookmarks
                && last_write.elapsed() >= BOOKMARK_INTERVAL
            {
                out.push(bookmark(kind, s.rv));
            }
            if !out.is_empty() {
                sent_rv = s.rv;
            }
        }
        if out.is_empty() {
            s = shared
                .changed
                .wait_timeout(s, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        drop(s);
        let written = out.iter().try_for_each(|event| write_chunk(conn, event));
        last_write = Instant::now();
        s = shared.lock();
        if written.is_err() {
            break written;
        }
    };
    s.open_watches -= 1;
    drop(s);
    result?;
    finish_chunks(conn)
}

/// The event a field-selected watcher sees for a change: the API server reports an
/// object that starts matching as ADDED and one that stops matching as DELETED.
fn translate(change: &Change, in_scope: &dyn Fn(&Value) -> bool) -> Option<Value> {
    let was = change.old.as_ref().is_some_and(in_scope);
    let is = in_scope(&change.new);
    let verb = match (change.verb, was, is) {
        ("DELETED", true, _) => "DELETED",
        ("DELETED", false, _) => return None,
        (_, true, true) => "MODIFIED",
        (_, false, true) => "ADDED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    Some(json!({"type": verb, "object": change.new}))
}

fn bookmark(kind: Kind, rv: u64) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "kind": kind.name(), "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
        "spec": {}, "status": {}
    }})
}

fn write_chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).expect("serialize watch event");
    line.push(b'\n');
    let mut chunk = format!("{:x}\r\n", line.len()).into_bytes();
    chunk.extend_from_slice(&line);
    chunk.extend_from_slice(b"\r\n");
    conn.write_all(&chunk)?;
    conn.flush()
}

fn finish_chunks(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"0\r\n\r\n")?;
    conn.flush()
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("serialize response");
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)?;
    conn.flush()
}

/// A `metav1.Status` failure, as the API server sends for errors.
fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

/// Current time as RFC 3339 UTC seconds, like `metadata.creationTimestamp`.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm) for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A stable fake UID derived from a name, for owner references.
fn uid_for(name: &str) -> String {
    // FNV-1a, twice with different seeds, spread over the 8-4-4-4-12 UID layout.
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A Pod as the API server returns it, running on `node` (empty: not yet scheduled).
/// `owner` is the controller `(kind, name)`; `containers` are `(name, containerID)` with
/// the runtime scheme, e.g. `("app", "containerd://0123abcd...")`.
pub fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    owner: Option<(&str, &str)>,
    labels: &[(&str, &str)],
    containers: &[(&str, &str)],
) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let now = timestamp();
    let mut metadata = json!({
        "name": name, "namespace": namespace, "uid": uid,
        "resourceVersion": "0", "creationTimestamp": now, "labels": labels,
    });
    if let Some((kind, owner_name)) = owner {
        let api_version = match kind {
            "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Deployment" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        metadata["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": owner_name,
            "uid": uid_for(owner_name), "controller": true, "blockOwnerDeletion": true
        }]);
        if kind == "DaemonSet" || kind == "StatefulSet" {
            metadata["generateName"] = json!(format!("{owner_name}-"));
        }
    }
    let spec_containers: Vec<Value> = containers
        .iter()
        .map(|(cname, _)| {
            json!({
                "name": cname, "image": format!("registry.example/{cname}:1.0"),
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            })
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(cname, id)| {
            let mut status = json!({
                "name": cname, "ready": !id.is_empty(), "restartCount": 0,
                "image": format!("registry.example/{cname}:1.0"),
                "imageID": format!("registry.example/{cname}@sha256:{}", "ab".repeat(32)),
                "started": !id.is_empty(), "lastState": {},
            });
            if id.is_empty() {
                status["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
            } else {
                status["containerID"] = json!(id);
                status["state"] = json!({"running": {"startedAt": now}});
            }
            status
        })
        .collect();
    let mut spec = json!({
        "containers": spec_containers, "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "securityContext": {},
        "schedulerName": "default-scheduler", "priority": 0,
        "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]
    });
    let status = if node.is_empty() {
        json!({"phase": "Pending", "qosClass": "BestEffort", "conditions": [
            {"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "Unschedulable"}
        ]})
    } else {
        spec["nodeName"] = json!(node);
        json!({
            "phase": "Running", "qosClass": "BestEffort",
            "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}],
            "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
            "startTime": now,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}
            ],
            "containerStatuses": statuses,
        })
    };
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status})
}

/// A Node as the API server returns it. `zone` becomes `topology.kubernetes.io/zone`.
pub fn node_json(name: &str, zone: Option<&str>, internal_ip: &str, pod_cidr: &str) -> Value {
    let now = timestamp();
    let mut labels = json!({
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
    });
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = json!(zone);
        labels["topology.kubernetes.io/region"] =
            json!(zone.trim_end_matches(|c: char| c.is_ascii_lowercase()));
    }
    let resources = json!({"cpu": "4", "memory": "16375876Ki", "pods": "110", "ephemeral-storage": "101430960Ki"});
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": name, "uid": uid_for(&format!("node/{name}")), "resourceVersion": "0",
            "creationTimestamp": now, "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "providerID": format!("fake://{name}")},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": now, "lastTransitionTime": now, "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now, "reason": "KubeletReady", "message": "kubelet is posting ready status"}
            ],
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "0".repeat(32), "systemUUID": uid_for(name), "bootID": uid_for(&format!("boot/{name}")),
                "kernelVersion": "6.8.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.33.1",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
            }
        }
    })
}
