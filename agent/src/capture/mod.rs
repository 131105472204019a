//! Capture: decoded kernel events into a connection table and per-workload TCP metrics.

pub mod event;
pub mod listeners;

use std::{collections::HashMap, sync::Arc};

use agent_common::{Direction, Role, Syscall};
use prometheus_client::metrics::counter::Counter;

use crate::{
    metadata::identity::Identity,
    metrics::{
        ConnectionLabels, DbLabels, HttpLabels, KindLabels, Metrics, Name, PeerZone,
        ProtocolLabels, RpcLabels, TcpBytesLabels, TcpSyscallLabels, WorkloadLabels,
    },
    protocols::{
        http1::{HttpExchange, RoutePatterns},
        http2::H2Exchange,
        Chunk, Completed, ConnectionProtocol, FeedOutcome, Operation, Protocol,
    },
};
use event::{Common, Endpoints, Event};
use listeners::Listeners;

pub fn role_label(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
        Role::Unknown => "unknown",
    }
}

pub fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Transmit => "transmit",
        Direction::Receive => "receive",
    }
}

/// A TCP connection as the agent knows it.
pub struct Connection {
    pub endpoints: Option<Endpoints>,
    pub role: Role,
    /// The process that opened it (or was first seen using it).
    pub pid: u32,
    pub workload: WorkloadLabels,
    /// The other end's zone, when the agent knows it.
    pub peer_zone: PeerZone,
    pub cgroup_id: u64,
    /// Whether the agent saw it open (connect or accept) rather than mid-life.
    pub seen_open: bool,
    pub last_ns: u64,
    /// Bytes and data syscalls, indexed by `Direction as usize`.
    pub bytes: [u64; 2],
    pub calls: [u64; 2],
    /// What it speaks, and the parsing session if it is a protocol the agent parses.
    pub protocol: ConnectionProtocol,
    counters: ConnCounters,
}

/// A connection's TCP counter handles, resolved on first use: a data event then costs two
/// atomic adds instead of two label-set lookups that hash the workload labels.
#[derive(Default)]
struct ConnCounters {
    /// By `Direction as usize`.
    bytes: [Option<Counter>; 2],
    /// By `Syscall as usize - 1`.
    calls: [Option<Counter>; Syscall::ALL.len()],
}

impl ConnCounters {
    fn get(
        &mut self,
        metrics: &Metrics,
        role: Role,
        workload: &WorkloadLabels,
        syscall: Syscall,
    ) -> (Counter, Counter) {
        let direction = syscall.direction();
        let bytes = self.bytes[direction as usize]
            .get_or_insert_with(|| {
                metrics.tcp_bytes.get_or_create_owned(&TcpBytesLabels {
                    direction: direction_label(direction),
                    role: role_label(role),
                    workload: workload.clone(),
                })
            })
            .clone();
        let calls = self.calls[syscall as usize - 1]
            .get_or_insert_with(|| {
                metrics.tcp_syscalls.get_or_create_owned(&TcpSyscallLabels {
                    direction: direction_label(direction),
                    role: role_label(role),
                    syscall: syscall.name(),
                    workload: workload.clone(),
                })
            })
            .clone();
        (bytes, calls)
    }
}

impl Connection {
    fn new(
        common: &Common,
        role: Role,
        workload: WorkloadLabels,
        peer_zone: PeerZone,
        seen_open: bool,
    ) -> Self {
        Connection {
            endpoints: common.endpoints,
            role,
            pid: common.pid,
            workload,
            peer_zone,
            cgroup_id: common.cgroup_id,
            seen_open,
            last_ns: common.exit_ns,
            bytes: [0; 2],
            calls: [0; 2],
            protocol: ConnectionProtocol::default(),
            counters: ConnCounters::default(),
        }
    }
}

pub struct TrackerOptions {
    pub idle_timeout_ns: u64,
    pub max_connections: usize,
    /// A request without a response for this long is dropped and counted.
    pub request_timeout_ns: u64,
    /// The user's HTTP route patterns (they win over the default normalisation).
    pub http_routes: Arc<RoutePatterns>,
}

/// The connection table: socket identity to connection, and (pid, fd) to socket.
pub struct Tracker {
    metrics: Arc<Metrics>,
    conns: HashMap<u64, Connection>,
    fds: HashMap<(u32, i32), u64>,
    listeners: Listeners,
    /// Workload labels and zones.
    identity: Identity,
    /// Process names read from procfs for connections seen mid-life, by pid.
    process_names: HashMap<u32, Name>,
    procfs: std::path::PathBuf,
    opts: TrackerOptions,
    /// Reused buffers of what sessions completed.
    done: Completed,
}

impl Tracker {
    pub fn new(
        metrics: Arc<Metrics>,
        procfs: &std::path::Path,
        opts: TrackerOptions,
        identity: Identity,
    ) -> Self {
        Self {
            metrics,
            conns: HashMap::new(),
            fds: HashMap::new(),
            listeners: Listeners::new(procfs),
            identity,
            process_names: HashMap::new(),
            procfs: procfs.to_path_buf(),
            opts,
            done: Completed::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn get(&self, sock_id: u64) -> Option<&Connection> {
        self.conns.get(&sock_id)
    }

    /// The socket behind a process's file descriptor, if it is a tracked TCP connection.
    pub fn by_fd(&self, pid: u32, fd: i32) -> Option<&Connection> {
        self.fds.get(&(pid, fd)).and_then(|id| self.conns.get(id))
    }

    /// Name of a process the agent saw no open event from (its connection predates the
    /// agent): data events carry no name, so read it once from procfs.
    fn process_name(&mut self, pid: u32) -> Name {
        if let Some(name) = self.process_names.get(&pid) {
            return name.clone();
        }
        if self.process_names.len() > 65536 {
            self.process_names.clear();
        }
        let comm = std::fs::read_to_string(self.procfs.join(pid.to_string()).join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let name = Name::new(&comm);
        self.process_names.insert(pid, name.clone());
        name
    }

    /// The workload behind an event, and the zone of the other end.
    fn identify(&mut self, common: &Common, comm: &str) -> (WorkloadLabels, PeerZone) {
        let workload = self
            .identity
            .workload_of_process(common.cgroup_id, common.pid, comm);
        let peer_zone = common
            .endpoints
            .and_then(|ep| self.identity.peer_zone(ep.remote.ip()));
        (workload, PeerZone(peer_zone))
    }

    /// Workload labels and zones, shared with the byte accounting.
    pub fn identity_mut(&mut self) -> &mut Identity {
        &mut self.identity
    }

    pub fn handle(&mut self, event: &Event<'_>) {
        self.metrics
            .events
            .get_or_create(&KindLabels {
                kind: event.kind_label(),
            })
            .inc();
        match *event {
            Event::Open { common, role } => self.on_open(&common, role),
            Event::Data {
                common,
                syscall,
                direction,
                bytes,
                payload,
            } => {
                let (role, workload) = self.on_data(&common, direction, bytes);
                let (bytes_counter, calls_counter) = match self.conns.get_mut(&common.sock_id) {
                    Some(conn) => conn.counters.get(&self.metrics, role, &workload, syscall),
                    // Not in the table (it was full): look the series up every time.
                    None => ConnCounters::default().get(&self.metrics, role, &workload, syscall),
                };
                bytes_counter.inc_by(bytes);
                calls_counter.inc();
                self.parse(&common, direction, bytes, payload);
            }
            Event::Close { common } => self.on_close(&common),
            Event::FdClose { common } => {
                self.fds.remove(&(common.pid, common.fd));
            }
        }
        self.metrics
            .connections_tracked
            .set(self.conns.len() as i64);
    }

    fn on_open(&mut self, common: &Common, role: Role) {
        let (workload, peer_zone) = self.identify(common, common.comm());
        self.metrics
            .tcp_opened
            .get_or_create(&ConnectionLabels {
                role: role_label(role),
                workload: workload.clone(),
            })
            .inc();
        // A socket address seen again means its previous close was lost: replace it.
        let conn = Connection::new(common, role, workload, peer_zone, true);
        self.insert(common, conn);
    }

    fn insert(&mut self, common: &Common, conn: Connection) {
        if !self.conns.contains_key(&common.sock_id)
            && self.conns.len() >= self.opts.max_connections
        {
            self.sweep(common.exit_ns);
            if self.conns.len() >= self.opts.max_connections {
                self.metrics.connections_untracked.inc();
                return;
            }
        }
        self.conns.insert(common.sock_id, conn);
        self.fds.insert((common.pid, common.fd), common.sock_id);
    }

    /// Updates the connection for a data event and returns its role and workload.
    fn on_data(
        &mut self,
        common: &Common,
        direction: Direction,
        bytes: u64,
    ) -> (Role, WorkloadLabels) {
        if !self.conns.contains_key(&common.sock_id) {
            let comm = self.process_name(common.pid);
            let (workload, peer_zone) = self.identify(common, &comm.0);
            // A connection that predates the agent (or whose open was lost).
            let role = match common.endpoints {
                Some(ep)
                    if self
                        .listeners
                        .is_listening(common.pid, ep.local.port(), common.exit_ns) =>
                {
                    Role::Server
                }
                Some(_) => Role::Client,
                None => Role::Unknown,
            };
            let conn = Connection::new(common, role, workload.clone(), peer_zone, false);
            self.insert(common, conn);
            if !self.conns.contains_key(&common.sock_id) {
                return (role, workload);
            }
        }
        let conn = self.conns.get_mut(&common.sock_id).expect("inserted above");
        conn.bytes[direction as usize] += bytes;
        conn.calls[direction as usize] += 1;
        conn.last_ns = common.exit_ns;
        let found = (conn.role, conn.workload.clone());
        self.fds
            .entry((common.pid, common.fd))
            .or_insert(common.sock_id);
        found
    }

    /// Feeds a data event's bytes to the connection's protocol session and records the
    /// operations it completes.
    fn parse(&mut self, common: &Common, direction: Direction, bytes: u64, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&common.sock_id) else {
            return;
        };
        let from_client = match (conn.role, direction) {
            (Role::Client, Direction::Transmit) | (Role::Server, Direction::Receive) => true,
            (Role::Client, Direction::Receive) | (Role::Server, Direction::Transmit) => false,
            (Role::Unknown, _) => return,
        };
        if matches!(conn.protocol, ConnectionProtocol::Ignored) {
            return;
        }
        // Timing (DESIGN.md): a write's first byte leaves when the call starts; a read's
        // bytes are in hand when it returns. Either ends at the return.
        let start_ns = match direction {
            Direction::Transmit => common.enter_ns,
            Direction::Receive => common.exit_ns,
        };
        let chunk = Chunk {
            data: payload,
            len: bytes as usize,
            start_ns,
            end_ns: common.exit_ns,
        };
        let before = conn.protocol.session_mut().map(|s| s.protocol());
        self.done.clear();
        let outcome =
            conn.protocol
                .feed(from_client, &chunk, &self.opts.http_routes, &mut self.done);
        let protocol = outcome.detected.or(before);
        let conn = &self.conns[&common.sock_id];
        if outcome.health.parse_errors > 0 {
            log::debug!(
                "{} framing lost on {:?} ({}, pid {}, {} bytes {}, {} copied, starting {:?})",
                protocol.map_or("?", Protocol::label),
                conn.endpoints,
                conn.workload.service_name(),
                common.pid,
                bytes,
                if from_client {
                    "from client"
                } else {
                    "from server"
                },
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(48)]),
            );
        }
        record_completed(
            &self.metrics,
            conn,
            protocol,
            &self.done,
            &self.opts.http_routes,
        );
        record_health(&self.metrics, protocol, &outcome);
    }

    /// Ends a connection's protocol session: what it still completes is recorded, what
    /// stays open never got a response.
    fn finish_session(&mut self, conn: &mut Connection) {
        let Some(session) = conn.protocol.session_mut() else {
            return;
        };
        let protocol = Some(session.protocol());
        self.done.clear();
        session.finish(&mut self.done);
        let mut health = session.take_health();
        health.timed_out += session.pending() as u64;
        conn.protocol = ConnectionProtocol::Ignored;
        record_completed(
            &self.metrics,
            conn,
            protocol,
            &self.done,
            &self.opts.http_routes,
        );
        record_health(
            &self.metrics,
            protocol,
            &FeedOutcome {
                detected: None,
                health,
            },
        );
    }

    fn on_close(&mut self, common: &Common) {
        let Some(mut conn) = self.conns.remove(&common.sock_id) else {
            return;
        };
        self.finish_session(&mut conn);
        self.metrics
            .tcp_closed
            .get_or_create(&ConnectionLabels {
                role: role_label(conn.role),
                workload: conn.workload.clone(),
            })
            .inc();
        self.fds.retain(|_, id| *id != common.sock_id);
    }

    /// Removes connections idle for longer than the timeout (their close was lost, or
    /// they are idle keep-alives that will be re-learned on their next byte).
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let timeout = self.opts.idle_timeout_ns;
        let request_timeout = self.opts.request_timeout_ns;
        for conn in self.conns.values_mut() {
            if let Some(session) = conn.protocol.session_mut() {
                let protocol = Some(session.protocol());
                session.expire(now_ns, request_timeout);
                let health = session.take_health();
                record_health(
                    &self.metrics,
                    protocol,
                    &FeedOutcome {
                        detected: None,
                        health,
                    },
                );
            }
        }
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ns) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            if let Some(mut conn) = self.conns.remove(id) {
                self.finish_session(&mut conn);
            }
        }
        let expired = idle.len();
        if expired > 0 {
            let conns = &self.conns;
            self.fds.retain(|_, id| conns.contains_key(id));
            self.metrics.connections_expired.inc_by(expired as u64);
        }
        self.metrics
            .connections_tracked
            .set(self.conns.len() as i64);
        expired
    }
}

/// Records what a connection's session completed.
fn record_completed(
    metrics: &Metrics,
    conn: &Connection,
    protocol: Option<Protocol>,
    done: &Completed,
    routes: &RoutePatterns,
) {
    if done.is_empty() {
        return;
    }
    record_operations(metrics, conn, protocol, &done.ops);
    record_http1(metrics, conn, &done.http);
    record_h2(metrics, conn, &done.h2, routes);
}

/// The server end of a connection, and whether the connection's owner is the client.
fn server_end(conn: &Connection) -> Option<(std::net::SocketAddr, bool)> {
    let endpoints = conn.endpoints?;
    match conn.role {
        Role::Client => Some((endpoints.remote, true)),
        Role::Server => Some((endpoints.local, false)),
        Role::Unknown => None,
    }
}

/// HTTP/1 exchanges; the session already applied the user's patterns to the route.
fn record_http1(metrics: &Metrics, conn: &Connection, exchanges: &[HttpExchange]) {
    let Some((server, client_side)) = server_end(conn) else {
        return;
    };
    for ex in exchanges {
        let labels = HttpLabels {
            http_request_method: ex.method,
            http_response_status_code: ex.status,
            http_route: ex.route.clone(),
            server_port: server.port(),
            peer: conn.peer_zone.clone(),
            workload: conn.workload.clone(),
        };
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        record_http(
            metrics,
            client_side,
            &labels,
            seconds,
            ex.request_body_bytes,
            ex.response_body_bytes,
        );
    }
}

/// gRPC status UNKNOWN (2): a stream reset without grpc-status failed for a reason the
/// wire does not say.
const GRPC_UNKNOWN: u32 = 2;

/// HTTP/2 streams: gRPC calls in the rpc families, the rest as HTTP requests.
fn record_h2(
    metrics: &Metrics,
    conn: &Connection,
    exchanges: &[H2Exchange],
    routes: &RoutePatterns,
) {
    let Some((server, client_side)) = server_end(conn) else {
        return;
    };
    for ex in exchanges {
        let seconds = ex.end_ns.saturating_sub(ex.start_ns) as f64 / 1e9;
        if let Some(grpc) = &ex.grpc {
            let labels = RpcLabels {
                rpc_system: "grpc",
                rpc_service: grpc.service.clone(),
                rpc_method: grpc.method.clone(),
                rpc_grpc_status_code: grpc.status.unwrap_or(GRPC_UNKNOWN),
                server_port: server.port(),
                peer: conn.peer_zone.clone(),
                workload: conn.workload.clone(),
            };
            let family = if client_side {
                &metrics.rpc_client_duration
            } else {
                &metrics.rpc_server_duration
            };
            family.observe(&labels, seconds);
            continue;
        }
        let labels = HttpLabels {
            http_request_method: crate::protocols::http1::method_label(ex.method.as_bytes()),
            http_response_status_code: ex.status,
            http_route: routes
                .matches(&ex.path)
                .map(str::to_owned)
                .unwrap_or_else(|| crate::protocols::http1::normalize_route(&ex.path)),
            server_port: server.port(),
            peer: conn.peer_zone.clone(),
            workload: conn.workload.clone(),
        };
        record_http(
            metrics,
            client_side,
            &labels,
            seconds,
            ex.request_body_bytes,
            ex.response_body_bytes,
        );
    }
}

fn record_http(
    metrics: &Metrics,
    client_side: bool,
    labels: &HttpLabels,
    seconds: f64,
    request_body: u64,
    response_body: u64,
) {
    let (duration, request_size, response_size) = if client_side {
        (
            &metrics.http_client_duration,
            &metrics.http_client_request_size,
            &metrics.http_client_response_size,
        )
    } else {
        (
            &metrics.http_server_duration,
            &metrics.http_server_request_size,
            &metrics.http_server_response_size,
        )
    };
    duration.observe(labels, seconds);
    request_size.observe(labels, request_body as f64);
    response_size.observe(labels, response_body as f64);
}

/// Observes each operation in the client or server duration histogram.
fn record_operations(
    metrics: &Metrics,
    conn: &Connection,
    protocol: Option<Protocol>,
    ops: &[Operation],
) {
    if ops.is_empty() {
        return;
    }
    let (Some(protocol), Some(endpoints)) = (protocol, conn.endpoints) else {
        return;
    };
    let (family, server) = match conn.role {
        Role::Client => (&metrics.db_client_duration, endpoints.remote),
        Role::Server => (&metrics.db_server_duration, endpoints.local),
        Role::Unknown => return,
    };
    let server_address = Name::new(&server.ip().to_string());
    for op in ops {
        let labels = DbLabels {
            db_system_name: protocol.label(),
            db_operation_name: op.name,
            error_type: op.error_type.clone(),
            server_address: server_address.clone(),
            server_port: server.port(),
            peer: conn.peer_zone.clone(),
            workload: conn.workload.clone(),
        };
        let seconds = op.end_ns.saturating_sub(op.start_ns) as f64 / 1e9;
        family.observe(&labels, seconds);
    }
}

fn record_health(metrics: &Metrics, protocol: Option<Protocol>, outcome: &FeedOutcome) {
    if let Some(detected) = outcome.detected {
        metrics
            .protocol_connections
            .get_or_create(&ProtocolLabels {
                protocol: detected.label(),
            })
            .inc();
    }
    let Some(protocol) = protocol else {
        return;
    };
    let labels = ProtocolLabels {
        protocol: protocol.label(),
    };
    let h = &outcome.health;
    if h.parse_errors > 0 {
        metrics
            .protocol_parse_errors
            .get_or_create(&labels)
            .inc_by(h.parse_errors);
    }
    if h.timed_out > 0 {
        metrics
            .protocol_timed_out
            .get_or_create(&labels)
            .inc_by(h.timed_out);
    }
    if h.stopped.is_some() {
        metrics.protocol_abandoned.get_or_create(&labels).inc();
    }
    if h.tls {
        // A PostgreSQL connection that negotiated TLS: counted as TLS too, not parsed.
        metrics
            .protocol_connections
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::Tls.label(),
            })
            .inc();
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so kernel and agent times compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::{decode, tests as ev};
    use agent_common::{EventKind, Syscall};

    /// A tracker whose procfs is a directory holding only process 100, named "redis".
    fn tracker(max: usize) -> (Tracker, Arc<Metrics>) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let procfs =
            std::env::temp_dir().join(format!("nodetap-procfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(procfs.join("100")).unwrap();
        std::fs::write(procfs.join("100/comm"), "redis\n").unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let t = Tracker::new(
            metrics.clone(),
            &procfs,
            TrackerOptions {
                idle_timeout_ns: 1_000,
                max_connections: max,
                request_timeout_ns: 1_000,
                http_routes: Arc::default(),
            },
            Identity::process_names_only(),
        );
        (t, metrics)
    }

    fn feed(t: &mut Tracker, h: &agent_common::EventHeader, payload: &[u8]) {
        let rec = ev::record(h, payload);
        t.handle(&decode(&rec).unwrap());
    }

    #[test]
    fn counts_bytes_by_role_and_closes() {
        let (mut t, m) = tracker(10);
        let mut open = ev::header(EventKind::Open);
        open.role = Role::Client as u8;
        feed(&mut t, &open, b"");
        for (syscall, bytes) in [
            (Syscall::Write, 100),
            (Syscall::Sendmsg, 20),
            (Syscall::Read, 7),
        ] {
            let mut d = ev::header(EventKind::Data);
            d.syscall = syscall as u8;
            d.bytes = bytes;
            feed(&mut t, &d, b"");
        }
        let conn = t.by_fd(100, 7).unwrap();
        assert_eq!(
            (conn.bytes, conn.calls, conn.role),
            ([120, 7], [2, 1], Role::Client)
        );
        let text = m.encode();
        assert!(text.contains("nodetap_tcp_bytes_total{direction=\"transmit\",role=\"client\",service_name=\"redis\"} 120\n"), "{text}");
        assert!(text.contains("nodetap_tcp_bytes_total{direction=\"receive\",role=\"client\",service_name=\"redis\"} 7\n"), "{text}");
        feed(&mut t, &ev::header(EventKind::Close), b"");
        assert!(t.is_empty() && t.by_fd(100, 7).is_none());
        let text = m.encode();
        assert!(
            text.contains(
                "nodetap_tcp_connections_closed_total{role=\"client\",service_name=\"redis\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "nodetap_tcp_connections_opened_total{role=\"client\",service_name=\"redis\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn request_metrics_carry_the_peers_zone_when_known() {
        use crate::metadata::{
            identity::SharedZones,
            zones::{SubnetZone, ZoneMap},
        };
        let (mut t, m) = tracker(10);
        let zones = ZoneMap::new(
            "use1-az1",
            &[SubnetZone {
                cidr: "10.9.0.0/16".into(),
                zone: "use1-az2".into(),
            }],
        )
        .unwrap();
        t.identity = Identity::new(None, None, SharedZones::new(zones));
        // Two Redis connections: one to a peer in a mapped subnet, one to an address
        // nothing says anything about.
        for (sock, remote) in [(1u64, [10, 9, 0, 5]), (2, [192, 168, 50, 5])] {
            let mut open = ev::header(EventKind::Open);
            open.role = Role::Client as u8;
            open.sock_id = sock;
            open.fd = sock as i32;
            open.tuple.remote_addr[..4].copy_from_slice(&remote);
            feed(&mut t, &open, b"");
            for (syscall, payload) in [
                (Syscall::Write, &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]),
                (Syscall::Read, &b"$1\r\nv\r\n"[..]),
            ] {
                let mut d = ev::header(EventKind::Data);
                d.sock_id = sock;
                d.fd = sock as i32;
                d.tuple.remote_addr[..4].copy_from_slice(&remote);
                d.syscall = syscall as u8;
                d.bytes = payload.len() as u64;
                d.captured = payload.len() as u32;
                feed(&mut t, &d, payload);
            }
        }
        let text = m.encode();
        assert!(
            text.contains("db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"10.9.0.5\",server_port=\"6379\",peer_zone=\"use1-az2\",service_name=\"redis\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"192.168.50.5\",server_port=\"6379\",service_name=\"redis\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn idle_connections_age_out_and_the_table_is_bounded() {
        let (mut t, m) = tracker(2);
        for i in 0..5u64 {
            let mut d = ev::header(EventKind::Data);
            d.syscall = Syscall::Read as u8;
            d.bytes = 1;
            d.sock_id = i;
            d.exit_ns = 10;
            feed(&mut t, &d, b"");
        }
        // Two fit; the other three are counted as untracked but their bytes still count.
        assert_eq!(t.len(), 2);
        assert_eq!(m.connections_untracked.get(), 3);
        assert!(m.encode().contains("nodetap_tcp_bytes_total{direction=\"receive\",role=\"client\",service_name=\"redis\"} 5\n"));
        assert_eq!(t.sweep(10 + 1_000), 2);
        assert_eq!(m.connections_expired.get(), 2);
        assert!(t.is_empty() && t.fds.is_empty());
    }
}
