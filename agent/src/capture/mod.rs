//! Capture: kernel records into a connection table, exact per-workload TCP metrics, the
//! byte streams the protocol sessions parse, and the instructions that tell the kernel
//! what to copy of each connection. What the sessions produce leaves through
//! `record.rs`: requests to the signals, health to the protocol counters.

pub mod budget;
pub mod event;
pub(crate) mod id_hash;
pub mod instructions;
pub mod listeners;
mod record;
pub mod rings;
pub mod stream;
mod threads;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_common::{Direction, Role, Syscall, Totals, CALL_KINDS};
use event::Counted;
use prometheus_client::metrics::counter::Counter;
use smallvec::SmallVec;

use crate::{
    metadata::{
        identity::Identity,
        workload::{Name, PeerZone, WorkloadLabels},
    },
    metrics::{ConnectionLabels, KindLabels, Metrics, TcpBytesLabels, TcpSyscallLabels},
    protocols::{
        http1::RoutePatterns, Chunk, ConnectionProtocol, FeedOutcome, Protocol, Request,
        SessionHealth, SessionOptions,
    },
    signals::Signal,
};
use event::{Common, Endpoints, Event};
use id_hash::IdMap;
use instructions::{InstructionSink, Wanted};
use listeners::Listeners;
use record::{record_health, record_requests, Recorder};
use stream::Stream;
use threads::Threads;

/// A TCP connection as the agent knows it.
pub struct Connection {
    /// The kernel's id for it.
    pub id: u64,
    pub endpoints: Option<Endpoints>,
    pub role: Role,
    /// The process that owns it (the first the kernel saw use it).
    pub pid: u32,
    pub workload: WorkloadLabels,
    /// The other end's zone, when the agent knows it.
    pub peer_zone: PeerZone,
    pub cgroup_id: u64,
    /// Whether the kernel saw its handshake (rather than finding it mid-life).
    pub seen_open: bool,
    pub last_ns: u64,
    /// Bytes and calls counted so far, indexed by `Direction as usize`: the kernel's
    /// totals as of the latest record.
    pub bytes: [u64; 2],
    pub calls: [u64; 2],
    /// The kernel's call counters of the kinds this connection used (one or two per
    /// direction, so a short list rather than a table of every kind: with 50,000
    /// connections tracked the table's 512 bytes a connection were most of the agent's
    /// memory). Two inline: most connections use one kind each way, and a list on the
    /// heap was a 112-byte allocation each.
    kinds: SmallVec<[KindCalls; 2]>,
    /// What the metrics have of `bytes`: they are brought up to date once per drain, not
    /// per record (an atomic add per record and counter waited for the record's stores
    /// each time).
    reported_bytes: [u64; 2],
    /// Whether the connection is on the tracker's list of counters to report.
    unreported: bool,
    /// Its key in the (pid, fd) index, if it has one.
    fd_key: Option<(u32, i32)>,
    /// What it speaks, and the parsing session if it is a protocol the agent parses.
    pub protocol: ConnectionProtocol,
    /// The two byte streams as fed to the session, by `Direction as usize`.
    streams: [Stream; 2],
    /// The last instruction sent to the kernel for it.
    wanted: Wanted,
    /// When the kernel reported its close (it ends a grace period later).
    closing_at: Option<u64>,
    counters: ConnCounters,
    /// The other end's connection, when it is on this node too (loopback, pod to pod):
    /// the id of the tracked connection with the mirrored addresses.
    pub peer: Option<u64>,
    /// Requests completed on it so far: the next one's place in the connection's order.
    pub requests_done: u64,
    /// A request may have been lost or mis-framed on it: its order no longer matches
    /// the other end's, so its requests are not linked to the other end's.
    pub order_broken: bool,
    /// Its open requests as thread-based linking follows them (see `threads`).
    opened: VecDeque<threads::Opened>,
    /// Thread-based linking stopped following it (its order broke, or it fell out of
    /// step with the session).
    threads_off: bool,
}

/// A connection's TCP byte counter handles, resolved on first use: a record then costs
/// an atomic add instead of a label-set lookup that hashes the workload labels.
#[derive(Default)]
struct ConnCounters {
    /// By `Direction as usize`.
    bytes: [Option<Counter>; 2],
}

/// One call kind of one direction of a connection: the kernel's total (u32, wrapping),
/// what the metrics have of it, and the metric's handle once resolved.
struct KindCalls {
    direction: Direction,
    syscall: Syscall,
    total: u32,
    reported: u32,
    counter: Option<Counter>,
}

impl KindCalls {
    fn counter(&mut self, metrics: &Metrics, role: Role, workload: &WorkloadLabels) -> &Counter {
        let (direction, syscall) = (self.direction, self.syscall);
        self.counter.get_or_insert_with(|| {
            metrics.tcp_syscalls.get_or_create_owned(&TcpSyscallLabels {
                direction: direction.label(),
                role: role.label(),
                syscall: syscall.name(),
                workload: workload.clone(),
            })
        })
    }
}

impl ConnCounters {
    fn bytes(
        &mut self,
        metrics: &Metrics,
        role: Role,
        workload: &WorkloadLabels,
        direction: Direction,
    ) -> &Counter {
        self.bytes[direction as usize].get_or_insert_with(|| {
            metrics.tcp_bytes.get_or_create_owned(&TcpBytesLabels {
                direction: direction.label(),
                role: role.label(),
                workload: workload.clone(),
            })
        })
    }
}

impl Connection {
    fn new(common: &Common, role: Role, workload: WorkloadLabels, peer_zone: PeerZone) -> Self {
        Connection {
            id: common.conn_id,
            endpoints: common.endpoints(),
            role,
            pid: common.pid,
            workload,
            peer_zone,
            cgroup_id: common.cgroup_id,
            seen_open: common.role != Role::Unknown,
            last_ns: common.exit_ns,
            bytes: [0; 2],
            calls: [0; 2],
            kinds: SmallVec::new(),
            reported_bytes: [0; 2],
            unreported: false,
            fd_key: None,
            protocol: ConnectionProtocol::default(),
            streams: Default::default(),
            wanted: Wanted::default(),
            closing_at: None,
            counters: ConnCounters::default(),
            peer: None,
            requests_done: 0,
            order_broken: false,
            opened: VecDeque::new(),
            threads_off: false,
        }
    }

    /// Notes what a session reported: any loss breaks the request order.
    fn note_health(&mut self, health: &SessionHealth) {
        if health.parse_errors > 0
            || health.timed_out > 0
            || health.stopped.is_some()
            || health.lost.iter().any(|(_, n)| n > 0)
        {
            self.order_broken = true;
        }
    }

    /// Brings the TCP counters up to what a record says of the kernel's. Every value is
    /// a total, so records lost on the way lose no byte and no call, and records arriving
    /// out of order across CPUs never count backwards.
    fn account(&mut self, counted: &Counted) {
        match *counted {
            Counted::All(totals) => {
                for direction in [Direction::Transmit, Direction::Receive] {
                    let d = direction as usize;
                    self.account_bytes(direction, totals.bytes[d]);
                    for syscall in Syscall::ALL {
                        let k = syscall as usize % CALL_KINDS;
                        self.account_calls(direction, syscall, totals.calls[d][k]);
                    }
                }
            }
            Counted::Call {
                direction,
                syscall,
                stream_end,
                kind_calls,
            } => {
                self.account_bytes(direction, stream_end);
                self.account_calls(direction, syscall, kind_calls);
            }
        }
    }

    fn account_bytes(&mut self, direction: Direction, total: u64) {
        let d = direction as usize;
        if total > self.bytes[d] {
            self.bytes[d] = total;
        }
    }

    fn account_calls(&mut self, direction: Direction, syscall: Syscall, total: u32) {
        let k = syscall as usize % CALL_KINDS;
        let known = self
            .kinds
            .iter()
            .position(|c| c.direction == direction && c.syscall as usize % CALL_KINDS == k);
        let kind = match known {
            Some(i) => &mut self.kinds[i],
            // A kind the connection has not used (every total starts at 0).
            None if total == 0 => return,
            None => {
                self.kinds.push(KindCalls {
                    direction,
                    syscall,
                    total: 0,
                    reported: 0,
                    counter: None,
                });
                self.kinds.last_mut().expect("just pushed")
            }
        };
        let diff = total.wrapping_sub(kind.total);
        // A total older than one already counted: never count backwards.
        if diff == 0 || diff >= 1 << 31 {
            return;
        }
        kind.total = total;
        self.calls[direction as usize] += u64::from(diff);
    }

    /// Brings the TCP metrics up to the counters.
    fn report(&mut self, metrics: &Metrics) {
        self.unreported = false;
        for direction in [Direction::Transmit, Direction::Receive] {
            let d = direction as usize;
            if self.bytes[d] > self.reported_bytes[d] {
                self.counters
                    .bytes(metrics, self.role, &self.workload, direction)
                    .inc_by(self.bytes[d] - self.reported_bytes[d]);
                self.reported_bytes[d] = self.bytes[d];
            }
        }
        for kind in &mut self.kinds {
            let diff = kind.total.wrapping_sub(kind.reported);
            if diff != 0 {
                kind.counter(metrics, self.role, &self.workload)
                    .inc_by(u64::from(diff));
                kind.reported = kind.total;
            }
        }
    }

    /// Which side of the conversation bytes in `direction` come from, if known.
    fn sent_by_client(&self, direction: Direction) -> Option<bool> {
        match (self.role, direction) {
            (Role::Client, Direction::Transmit) | (Role::Server, Direction::Receive) => Some(true),
            (Role::Client, Direction::Receive) | (Role::Server, Direction::Transmit) => Some(false),
            (Role::Unknown, _) => None,
        }
    }

    /// What the kernel should copy of this connection from now on.
    fn wanted(&self) -> Wanted {
        match &self.protocol {
            // Nothing to parse: counters only.
            ConnectionProtocol::Ignored => Wanted::counts_only(),
            _ if self.role == Role::Unknown => Wanted::counts_only(),
            ConnectionProtocol::Parsing(..) => {
                let mut wanted = Wanted::parse();
                for direction in [Direction::Transmit, Direction::Receive] {
                    let d = direction as usize;
                    let from_client = self.sent_by_client(direction).unwrap_or(true);
                    wanted.fed[d] = self.streams[d].fed();
                    wanted.skip_until[d] = wanted.fed[d] + self.protocol.skip_hint(from_client);
                }
                wanted
            }
            // Nothing known yet: the kernel's default (copy, within the undecided budget).
            _ => Wanted::default(),
        }
    }
}

/// How long a closed connection waits for records of its last calls made on other CPUs
/// (they are in the ring buffer already; a drain or two picks them up).
const CLOSE_GRACE_NS: u64 = 100_000_000;

/// The last closed connection ids, so that a record trailing its connection's close is
/// not taken for a new connection.
#[derive(Default)]
struct RecentlyClosed {
    ids: std::collections::HashSet<u64, id_hash::IdBuildHasher>,
    order: std::collections::VecDeque<u64>,
}

impl RecentlyClosed {
    /// Records trail a close by up to a drain or a ring merge; at 20,000 closes a second
    /// (both ends of 10,000 loopback connections) 4,096 ids covered 0.2 s, and the
    /// syscall tier counted a few connections twice in a million. 65,536 ids (about
    /// 1.5 MiB) cover 3 s at that rate.
    const CAPACITY: usize = 65_536;

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
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
    /// The spans signal, when spans are exported.
    pub spans: Option<crate::signals::spans::Spans>,
}

/// The connection table: connection id to connection, and (pid, fd) to connection.
pub struct Tracker {
    metrics: Arc<Metrics>,
    /// Boxed: a table of connections inline is sized in whole powers of two of the
    /// connection's size, and when it grows the old and the new table live at once.
    conns: IdMap<u64, Box<Connection>>,
    /// Over the CPU budget: connections new to the table are counted, not parsed.
    degraded: bool,
    fds: IdMap<(u32, i32), u64>,
    /// Connection ids by (local, remote) address: finds the other end of a connection
    /// whose two ends are both on this node.
    by_endpoints: HashMap<Endpoints, u64>,
    listeners: Listeners,
    /// Workload labels and zones.
    identity: Identity,
    /// Process names read from procfs for connections whose open record was lost, by pid.
    process_names: HashMap<u32, Name>,
    procfs: std::path::PathBuf,
    opts: TrackerOptions,
    /// Where instructions for the kernel go.
    instructions: Box<dyn InstructionSink>,
    /// Connections closed lately: a record of theirs arriving after the grace period must
    /// not bring them back and count them twice.
    closed: RecentlyClosed,
    /// Connections whose close was reported, waiting out the grace period.
    closing: Vec<u64>,
    /// What new protocol sessions are given.
    sessions: SessionOptions,
    /// Where completed requests go (see [`crate::signals::registered`]).
    signals: Vec<Box<dyn Signal>>,
    /// Thread-based linking, when spans are on.
    threads: Option<Threads>,
    /// Reused buffer of the thread contexts of what sessions completed.
    contexts: Vec<Option<crate::signals::ThreadContext>>,
    /// Reused buffer of what sessions completed.
    done: Vec<Request>,
    /// `nodetap_events_total` by kind, resolved once, and the records counted since the
    /// last drain: a locked add per record waited for the record's stores each time.
    event_counters: [Counter; event::EVENT_KINDS.len()],
    events_pending: [u64; event::EVENT_KINDS.len()],
    /// Connections whose TCP counters moved since the last drain (see
    /// `Connection::report`).
    unreported: Vec<u64>,
}

impl Tracker {
    pub fn new(
        metrics: Arc<Metrics>,
        procfs: &std::path::Path,
        mut opts: TrackerOptions,
        identity: Identity,
        instructions: Box<dyn InstructionSink>,
    ) -> Self {
        let threads = opts.spans.is_some().then(Threads::default);
        let signals = crate::signals::registered(&metrics, opts.spans.take());
        Self {
            conns: IdMap::default(),
            degraded: false,
            fds: IdMap::default(),
            by_endpoints: HashMap::new(),
            listeners: Listeners::new(procfs),
            identity,
            process_names: HashMap::new(),
            procfs: procfs.to_path_buf(),
            instructions,
            closed: RecentlyClosed::default(),
            closing: Vec::new(),
            sessions: SessionOptions {
                http_routes: opts.http_routes.clone(),
            },
            opts,
            signals,
            threads,
            contexts: Vec::new(),
            done: Vec::new(),
            events_pending: [0; event::EVENT_KINDS.len()],
            unreported: Vec::new(),
            event_counters: event::EVENT_KINDS
                .map(|kind| metrics.events.get_or_create_owned(&KindLabels { kind })),
            metrics,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.conns.get(&conn_id).map(|c| &**c)
    }

    /// The connection behind a process's file descriptor, if it is a tracked TCP connection.
    pub fn by_fd(&self, pid: u32, fd: i32) -> Option<&Connection> {
        self.fds
            .get(&(pid, fd))
            .and_then(|id| self.conns.get(id))
            .map(|c| &**c)
    }

    /// Name of a process the agent got no open record from: read it once from procfs.
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

    /// The workload behind a record, and the zone of the other end.
    fn identify(&mut self, common: &Common, comm: &str) -> (WorkloadLabels, PeerZone) {
        let workload = self
            .identity
            .workload_of_process(common.cgroup_id, common.pid, comm);
        let peer_zone = common
            .endpoints()
            .and_then(|ep| self.identity.peer_zone(ep.remote.ip()));
        (workload, PeerZone(peer_zone))
    }

    /// Workload labels and zones, shared with the byte accounting.
    pub fn identity_mut(&mut self) -> &mut Identity {
        &mut self.identity
    }

    pub fn handle(&mut self, event: &Event<'_>) {
        self.events_pending[event.kind_index()] += 1;
        let common = event.common();
        if let Event::Close { .. } = event {
            if self.conns.contains_key(&common.conn_id) || !self.closed.contains(common.conn_id) {
                self.on_close(common);
            }
            return;
        }
        // One lookup for a known connection (the common case). Ids are never reused:
        // only a connection not in the table can be a closed one.
        let conn = match self.conns.get_mut(&common.conn_id) {
            Some(conn) => conn,
            None => {
                if self.closed.contains(common.conn_id) || !self.ensure(common) {
                    return;
                }
                self.metrics
                    .connections_tracked
                    .set(self.conns.len() as i64);
                self.conns.get_mut(&common.conn_id).expect("ensured")
            }
        };
        conn.account(&common.counted);
        if !conn.unreported {
            conn.unreported = true;
            self.unreported.push(common.conn_id);
        }
        conn.last_ns = conn.last_ns.max(common.exit_ns);
        if let Event::Data {
            direction,
            bytes,
            call_offset,
            payload_offset,
            last,
            payload,
            ..
        } = *event
        {
            let segment = stream::Segment {
                call_offset,
                call_bytes: bytes,
                payload_offset,
                payload,
                last,
            };
            let mut to = Recorder {
                signals: &mut self.signals,
                threads: self.threads.as_mut(),
                contexts: &mut self.contexts,
                tid: Some(common.tid),
                pid: common.pid,
            };
            parse(
                conn,
                &mut self.done,
                &self.sessions,
                &mut to,
                &self.metrics,
                common,
                direction,
                &segment,
            );
        }
        let wanted = conn.wanted();
        if conn.wanted.worth_sending(&wanted) {
            conn.wanted = wanted;
            self.instructions.set(common.conn_id, wanted.instruction());
        }
    }

    /// Over the CPU budget or not (see `budget`): while over, connections new to the
    /// table are counts-only.
    pub fn set_degraded(&mut self, degraded: bool) {
        self.degraded = degraded;
        self.metrics.capture_degraded.set(i64::from(degraded));
    }

    /// Makes sure the record's connection is in the table; false if the table is full
    /// (its counters are then counted on a connection made for this record alone).
    fn ensure(&mut self, common: &Common) -> bool {
        if self.conns.contains_key(&common.conn_id) {
            return true;
        }
        let comm = if common.comm[0] != 0 {
            Name::new(common.comm())
        } else if common.pid != 0 {
            self.process_name(common.pid)
        } else {
            Name::new("unknown")
        };
        let (workload, peer_zone) = self.identify(common, &comm.0);
        // A connection that predates the agent: a server if its local port is listening.
        let role = match (common.role, common.endpoints()) {
            (Role::Unknown, Some(ep))
                if common.pid != 0
                    && self
                        .listeners
                        .is_listening(common.pid, ep.local.port(), common.exit_ns) =>
            {
                Role::Server
            }
            (Role::Unknown, Some(_)) => Role::Client,
            (role, _) => role,
        };
        let mut conn = Connection::new(common, role, workload, peer_zone);
        if self.degraded {
            // Counts only: its first record's instruction tells the kernel to copy
            // nothing of it from then on.
            conn.protocol = ConnectionProtocol::Ignored;
            self.metrics.capture_degraded_connections.inc();
        }
        if conn.seen_open {
            self.metrics
                .tcp_opened
                .get_or_create(&ConnectionLabels {
                    role: role.label(),
                    workload: conn.workload.clone(),
                })
                .inc();
        }
        if self.conns.len() >= self.opts.max_connections {
            self.sweep(common.exit_ns);
        }
        if self.conns.len() >= self.opts.max_connections {
            self.metrics.connections_untracked.inc();
            let mut conn = conn;
            conn.account(&common.counted);
            conn.report(&self.metrics);
            return false;
        }
        let mut conn = conn;
        if let Some(endpoints) = conn.endpoints {
            let mirrored = Endpoints {
                local: endpoints.remote,
                remote: endpoints.local,
            };
            if let Some(&other) = self.by_endpoints.get(&mirrored) {
                if let Some(peer) = self.conns.get_mut(&other) {
                    peer.peer = Some(common.conn_id);
                    conn.peer = Some(other);
                }
            }
            self.by_endpoints.insert(endpoints, common.conn_id);
        }
        if common.fd >= 0 && common.pid != 0 {
            conn.fd_key = Some((common.pid, common.fd));
            self.fds.insert((common.pid, common.fd), common.conn_id);
        }
        self.conns.insert(common.conn_id, Box::new(conn));
        true
    }

    /// Drops a removed connection from the address index (unless a newer connection
    /// with the same addresses took its place).
    fn forget_endpoints(&mut self, id: u64, conn: &Connection) {
        if let Some(endpoints) = conn.endpoints {
            if self.by_endpoints.get(&endpoints) == Some(&id) {
                self.by_endpoints.remove(&endpoints);
            }
        }
    }

    /// Publishes the instructions written since the last call (one generation bump for
    /// a whole drain of the ring buffer).
    pub fn publish_instructions(&mut self) {
        self.instructions.publish();
    }

    /// After a drain of the ring buffer: publishes instructions and ends connections
    /// closed longer than the grace period ago.
    pub fn after_drain(&mut self, now_ns: u64) {
        self.report_counters();
        self.publish_instructions();
        self.end_closed(now_ns);
    }

    /// Brings the record and TCP counters up to what the records since the last call said.
    pub fn report_counters(&mut self) {
        for (counter, pending) in self.event_counters.iter().zip(&mut self.events_pending) {
            if *pending > 0 {
                counter.inc_by(std::mem::take(pending));
            }
        }
        for id in self.unreported.drain(..) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.report(&self.metrics);
            }
        }
    }

    /// Ends a removed connection's session, and what thread-based linking held of it.
    fn end_session(&mut self, conn: &mut Connection) {
        self.finish_session(conn);
        if let Some(threads) = self.threads.as_mut() {
            threads.ended(conn);
        }
    }

    /// Ends a connection's protocol session: the bytes still held of calls whose last
    /// segment never came are fed, what the session still completes is recorded, what
    /// stays open never got a response.
    fn finish_session(&mut self, conn: &mut Connection) {
        if matches!(conn.protocol, ConnectionProtocol::Parsing(..)) {
            self.done.clear();
            let mut health = SessionHealth::default();
            for direction in [Direction::Transmit, Direction::Receive] {
                let Some(from_client) = conn.sent_by_client(direction) else {
                    continue;
                };
                let (protocol, streams) = (&mut conn.protocol, &mut conn.streams);
                let at = conn.last_ns;
                streams[direction as usize].finish(|data, len| {
                    let chunk = Chunk {
                        data,
                        len,
                        start_ns: at,
                        end_ns: at,
                    };
                    let o = protocol.feed(from_client, &chunk, &self.sessions, &mut self.done);
                    health.merge(&o.health);
                });
            }
            let protocol = conn.protocol.session_mut().map(|(p, _)| p);
            self.record_results(conn, protocol, health);
        }
        let Some((protocol, session)) = conn.protocol.session_mut() else {
            return;
        };
        let protocol = Some(protocol);
        self.done.clear();
        session.finish(&mut self.done);
        let mut health = session.take_health();
        health.timed_out += session.pending() as u64;
        conn.protocol = ConnectionProtocol::Ignored;
        self.record_results(conn, protocol, health);
    }

    /// Records what a connection's session completed (in `self.done`) and its health.
    fn record_results(
        &mut self,
        conn: &mut Connection,
        protocol: Option<Protocol>,
        health: SessionHealth,
    ) {
        conn.note_health(&health);
        let mut to = Recorder {
            signals: &mut self.signals,
            threads: self.threads.as_mut(),
            contexts: &mut self.contexts,
            tid: None,
            pid: conn.pid,
        };
        record_requests(&mut to, conn, protocol, &self.done);
        record_health(&self.metrics, protocol, &FeedOutcome::health(health));
    }

    /// A close record: the connection ends after a short grace period, because records
    /// of its last calls made on other CPUs can arrive after the close (a server's reply
    /// to a client that reset the connection on receiving it).
    fn on_close(&mut self, common: &Common) {
        if !self.conns.contains_key(&common.conn_id) {
            // Its other records were all lost: count its bytes under what the close says.
            if common.counted == Counted::All(Totals::default()) || !self.ensure(common) {
                return;
            }
        }
        if let Some(conn) = self.conns.get_mut(&common.conn_id) {
            conn.account(&common.counted);
            if !conn.unreported {
                conn.unreported = true;
                self.unreported.push(common.conn_id);
            }
            if conn.closing_at.is_none() {
                conn.closing_at = Some(common.exit_ns);
                self.closing.push(common.conn_id);
            }
        }
    }

    /// Ends the connections whose close is older than the grace period (all of them with
    /// `u64::MAX`): their sessions finish, their closes are counted.
    pub fn end_closed(&mut self, now_ns: u64) {
        let mut i = 0;
        while i < self.closing.len() {
            let id = self.closing[i];
            let due = self
                .conns
                .get(&id)
                .and_then(|c| c.closing_at)
                .is_none_or(|at| now_ns.saturating_sub(at) >= CLOSE_GRACE_NS);
            if !due {
                i += 1;
                continue;
            }
            self.closing.swap_remove(i);
            let Some(mut conn) = self.conns.remove(&id) else {
                continue;
            };
            conn.report(&self.metrics);
            self.forget_endpoints(id, &conn);
            self.end_session(&mut conn);
            self.metrics
                .tcp_closed
                .get_or_create(&ConnectionLabels {
                    role: conn.role.label(),
                    workload: conn.workload.clone(),
                })
                .inc();
            // Its own entry only: a later connection may have taken the (pid, fd).
            if let Some(key) = conn.fd_key {
                if self.fds.get(&key) == Some(&id) {
                    self.fds.remove(&key);
                }
            }
            self.instructions.forget(id);
            self.closed.insert(id);
        }
        self.metrics
            .connections_tracked
            .set(self.conns.len() as i64);
    }

    /// Removes connections idle for longer than the timeout (their close was lost, or
    /// they are idle keep-alives that will be re-learned on their next byte).
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let timeout = self.opts.idle_timeout_ns;
        let request_timeout = self.opts.request_timeout_ns;
        for conn in self.conns.values_mut() {
            if let Some((protocol, session)) = conn.protocol.session_mut() {
                let protocol = Some(protocol);
                session.expire(now_ns, request_timeout);
                let health = session.take_health();
                conn.note_health(&health);
                record_health(&self.metrics, protocol, &FeedOutcome::health(health));
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
                conn.report(&self.metrics);
                self.forget_endpoints(*id, &conn);
                self.end_session(&mut conn);
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

/// Feeds one segment of a call's bytes to the connection's protocol session and hands
/// out the requests it completes. A free function over the tracker's parts, so the one
/// table lookup per record serves the whole record.
#[allow(clippy::too_many_arguments)]
fn parse(
    conn: &mut Connection,
    done: &mut Vec<Request>,
    sessions: &SessionOptions,
    to: &mut Recorder<'_>,
    metrics: &Metrics,
    common: &Common,
    direction: Direction,
    segment: &stream::Segment<'_>,
) {
    let Some(from_client) = conn.sent_by_client(direction) else {
        return;
    };
    if matches!(conn.protocol, ConnectionProtocol::Ignored) {
        conn.streams[direction as usize].skip_to(segment);
        return;
    }
    // Timing (docs/design.md): a write's first byte leaves when the call starts; a read's
    // bytes are in hand when it returns. Either ends at the return.
    let start_ns = match direction {
        Direction::Transmit => common.enter_ns,
        Direction::Receive => common.exit_ns,
    };
    let before = conn.protocol.session_mut().map(|(p, _)| p);
    done.clear();
    let mut outcome = FeedOutcome::default();
    let protocol = &mut conn.protocol;
    conn.streams[direction as usize].feed(segment, |data, len| {
        let chunk = Chunk {
            data,
            len,
            start_ns,
            end_ns: common.exit_ns,
        };
        let o = protocol.feed(from_client, &chunk, sessions, done);
        outcome.detected = outcome.detected.or(o.detected);
        outcome.health.merge(&o.health);
    });
    let protocol = outcome.detected.or(before);
    if outcome.health.parse_errors > 0 {
        // Never the payload: it can hold credentials (AUTH, password messages).
        log::debug!(
            "{} framing lost on {:?} ({}, pid {}, {} bytes {} at stream offset {})",
            protocol.map_or("?", Protocol::label),
            conn.endpoints,
            conn.workload.service_name(),
            common.pid,
            segment.call_bytes,
            if from_client {
                "from client"
            } else {
                "from server"
            },
            segment.call_offset,
        );
    }
    conn.note_health(&outcome.health);
    record_requests(to, conn, protocol, done);
    if let (Some(threads), Some(protocol)) = (to.threads.as_deref_mut(), protocol) {
        threads.opened(conn, protocol, common.tid, common.pid);
    }
    record_health(metrics, protocol, &outcome);
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
    use agent_common::{EventKind, Instruction, Syscall, MODE_COUNTS_ONLY};
    use std::sync::Mutex;

    /// Instructions the tracker sent, shared with the test.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(u64, Instruction)>>>);

    impl InstructionSink for Recorder {
        fn set(&mut self, conn_id: u64, instruction: Instruction) {
            self.0.lock().unwrap().push((conn_id, instruction));
        }
        fn forget(&mut self, _: u64) {}
        fn publish(&mut self) {}
    }

    /// A tracker whose procfs is a directory holding only process 100, named "redis".
    fn tracker(max: usize) -> (Tracker, Arc<Metrics>, Recorder) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let procfs =
            std::env::temp_dir().join(format!("nodetap-procfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(procfs.join("100")).unwrap();
        std::fs::write(procfs.join("100/comm"), "redis\n").unwrap();
        let metrics = Arc::new(Metrics::new("test"));
        let recorder = Recorder::default();
        let t = Tracker::new(
            metrics.clone(),
            &procfs,
            TrackerOptions {
                idle_timeout_ns: 1_000,
                max_connections: max,
                request_timeout_ns: 1_000,
                http_routes: Arc::default(),
                spans: None,
            },
            Identity::process_names_only(),
            Box::new(recorder.clone()),
        );
        (t, metrics, recorder)
    }

    fn feed(t: &mut Tracker, h: &ev::TestRecord, payload: &[u8]) {
        let rec = ev::record(h, payload);
        t.handle(&decode(&rec).unwrap());
        // As after every drain of the ring buffers.
        t.report_counters();
    }

    /// A connection as the kernel reports it: its counters move with every call.
    struct Conn {
        header: ev::TestRecord,
    }

    impl Conn {
        fn new(conn_id: u64, role: Role) -> Self {
            let mut header = ev::header(EventKind::Data);
            header.conn_id = conn_id;
            header.role = role as u8;
            Conn { header }
        }

        /// A call that moved `payload` (all copied), as one record.
        fn call(
            &mut self,
            syscall: Syscall,
            direction: Direction,
            payload: &[u8],
        ) -> ev::TestRecord {
            self.moved(
                syscall,
                direction,
                payload.len() as u64,
                payload.len() as u32,
            )
        }

        /// A call that moved `bytes`, of which the first `captured` were copied.
        fn moved(
            &mut self,
            syscall: Syscall,
            direction: Direction,
            bytes: u64,
            captured: u32,
        ) -> ev::TestRecord {
            let d = direction as usize;
            let h = &mut self.header;
            let totals = &mut h.summary.totals;
            h.header.kind = EventKind::Data as u8;
            h.header.syscall = syscall as u8;
            h.header.direction = direction as u8;
            h.header.call_offset = totals.bytes[d];
            h.header.payload_offset = h.header.call_offset;
            h.header.bytes = bytes;
            h.header.captured = captured;
            totals.bytes[d] += bytes;
            totals.calls[d][syscall as usize] += 1;
            h.header.kind_calls = totals.calls[d][syscall as usize];
            *h
        }

        fn with_kind(&self, kind: EventKind) -> ev::TestRecord {
            let mut h = self.header;
            h.kind = kind as u8;
            h.captured = 0;
            h
        }
    }

    fn text_has(m: &Metrics, line: &str) {
        let text = m.encode();
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    #[test]
    fn counts_bytes_by_role_and_syscall_and_closes() {
        let (mut t, m, _) = tracker(10);
        let mut c = Conn::new(1, Role::Client);
        feed(&mut t, &c.with_kind(EventKind::Open), b"");
        for (syscall, direction, n) in [
            (Syscall::Write, Direction::Transmit, 100),
            (Syscall::Sendmsg, Direction::Transmit, 20),
            (Syscall::Read, Direction::Receive, 7),
        ] {
            let h = c.moved(syscall, direction, n, 0);
            feed(&mut t, &h, b"");
        }
        let conn = t.by_fd(100, 7).unwrap();
        assert_eq!(
            (conn.bytes, conn.calls, conn.role),
            ([120, 7], [2, 1], Role::Client)
        );
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"transmit\",role=\"client\",service_name=\"redis\"} 120\n");
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"receive\",role=\"client\",service_name=\"redis\"} 7\n");
        text_has(&m, "nodetap_tcp_syscalls_total{direction=\"transmit\",role=\"client\",syscall=\"sendmsg\",service_name=\"redis\"} 1\n");
        feed(&mut t, &c.with_kind(EventKind::Close), b"");
        t.end_closed(u64::MAX);
        assert!(t.is_empty() && t.by_fd(100, 7).is_none());
        text_has(
            &m,
            "nodetap_tcp_connections_closed_total{role=\"client\",service_name=\"redis\"} 1\n",
        );
        text_has(
            &m,
            "nodetap_tcp_connections_opened_total{role=\"client\",service_name=\"redis\"} 1\n",
        );
    }

    #[test]
    fn lost_records_lose_no_byte_and_no_call() {
        let (mut t, m, _) = tracker(10);
        let mut c = Conn::new(2, Role::Server);
        feed(&mut t, &c.with_kind(EventKind::Open), b"");
        // Ten calls; only the 3rd and the close reach userspace (the ring was full).
        let mut kept = None;
        for i in 0..10 {
            let h = c.moved(Syscall::Recvfrom, Direction::Receive, 1000, 0);
            if i == 2 {
                kept = Some(h);
            }
        }
        feed(&mut t, &kept.unwrap(), b"");
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"receive\",role=\"server\",service_name=\"redis\"} 3000\n");
        feed(&mut t, &c.with_kind(EventKind::Close), b"");
        t.end_closed(u64::MAX);
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"receive\",role=\"server\",service_name=\"redis\"} 10000\n");
        text_has(&m, "nodetap_tcp_syscalls_total{direction=\"receive\",role=\"server\",syscall=\"recvfrom\",service_name=\"redis\"} 10\n");
        // A record arriving after the close (another CPU) is not counted again.
        feed(&mut t, &kept.unwrap(), b"");
        assert!(t.is_empty());
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"receive\",role=\"server\",service_name=\"redis\"} 10000\n");
    }

    #[test]
    fn a_close_alone_still_counts_its_connection() {
        let (mut t, m, _) = tracker(10);
        let mut c = Conn::new(3, Role::Client);
        c.moved(Syscall::Write, Direction::Transmit, 42, 0);
        let mut close = c.with_kind(EventKind::Close);
        close.pid = 0;
        close.summary.comm = [0; 16];
        feed(&mut t, &close, b"");
        t.end_closed(u64::MAX);
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"transmit\",role=\"client\",service_name=\"unknown\"} 42\n");
        assert!(t.is_empty());
    }

    #[test]
    fn parsed_connections_get_a_parse_instruction_and_others_counts_only() {
        let (mut t, m, rec) = tracker(10);
        let mut redis = Conn::new(4, Role::Client);
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let h = redis.call(Syscall::Write, Direction::Transmit, get);
        feed(&mut t, &h, get);
        let h = redis.call(Syscall::Read, Direction::Receive, b"$1\r\nv\r\n");
        feed(&mut t, &h, b"$1\r\nv\r\n");
        let mut tls = Conn::new(5, Role::Client);
        let hello = [0x16, 3, 1, 0, 5, 1, 0, 0, 1, 3];
        let h = tls.call(Syscall::Write, Direction::Transmit, &hello);
        feed(&mut t, &h, &hello);
        let sent = rec.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!((sent[0].0, sent[0].1.mode), (4, [0, 0]));
        assert_eq!((sent[1].0, sent[1].1.mode), (5, [MODE_COUNTS_ONLY; 2]));
        text_has(&m, "db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"127.0.0.2\",server_port=\"6379\",service_name=\"redis\"} 1\n");
    }

    #[test]
    fn segments_of_a_call_and_the_uncopied_rest_reach_the_parser_in_order() {
        let (mut t, m, _) = tracker(10);
        let mut c = Conn::new(6, Role::Client);
        // 3 pipelined GETs written at once, sent as two segments.
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let batch: Vec<u8> = get.iter().chain(get).chain(get).copied().collect();
        let mut h = c.moved(Syscall::Write, Direction::Transmit, batch.len() as u64, 30);
        h.flags = 0;
        feed(&mut t, &h, &batch[..30]);
        h.payload_offset = 30;
        h.captured = (batch.len() - 30) as u32;
        h.flags = agent_common::FLAG_LAST_SEGMENT;
        feed(&mut t, &h, &batch[30..]);
        // The replies: a bulk string whose value the kernel did not copy (a gap).
        let reply = b"$5\r\nvalue\r\n";
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.extend_from_slice(reply);
        }
        let mut h = c.moved(Syscall::Read, Direction::Receive, replies.len() as u64, 4);
        h.flags = 0;
        feed(&mut t, &h, &replies[..4]);
        let mut h2 = h;
        h2.flags = agent_common::FLAG_LAST_SEGMENT;
        h2.payload_offset = h.call_offset + 11;
        h2.captured = 22;
        feed(&mut t, &h2, &replies[11..]);
        text_has(&m, "db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"127.0.0.2\",server_port=\"6379\",service_name=\"redis\"} 3\n");
    }

    #[test]
    fn request_metrics_carry_the_peers_zone_when_known() {
        use crate::metadata::{
            identity::SharedZones,
            zones::{SubnetZone, ZoneMap},
        };
        let (mut t, m, _) = tracker(10);
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
        for (id, remote) in [(1u64, [10, 9, 0, 5]), (2, [192, 168, 50, 5])] {
            let mut c = Conn::new(id, Role::Client);
            c.header.tuple.remote_addr[..4].copy_from_slice(&remote);
            for (syscall, direction, payload) in [
                (
                    Syscall::Write,
                    Direction::Transmit,
                    &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..],
                ),
                (Syscall::Read, Direction::Receive, &b"$1\r\nv\r\n"[..]),
            ] {
                let h = c.call(syscall, direction, payload);
                feed(&mut t, &h, payload);
            }
        }
        text_has(&m, "db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"10.9.0.5\",server_port=\"6379\",peer_zone=\"use1-az2\",service_name=\"redis\"} 1\n");
        text_has(&m, "db_client_operation_duration_seconds_count{db_system_name=\"redis\",db_operation_name=\"GET\",error_type=\"\",server_address=\"192.168.50.5\",server_port=\"6379\",service_name=\"redis\"} 1\n");
    }

    /// Both ends of one connection on this node: a Redis client (id 1) and the server's
    /// accepted socket (id 2) with the mirrored addresses, both seen from their handshake.
    /// Feeds `gets` GETs through both and returns the spans they made; with
    /// `junk_after: Some(i)`, the server reads bytes that are no RESP after the i-th.
    fn both_ends(
        gets: usize,
        junk_after: Option<usize>,
    ) -> Vec<crate::signals::spans::FinishedSpan> {
        use crate::signals::spans::{Sampler, SpanOptions, Spans};
        let (mut t, m, _) = tracker(10);
        let (spans, mut rx) = Spans::new(
            SpanOptions {
                sampler: Sampler::AlwaysOn,
                slow_threshold: std::time::Duration::ZERO,
                queue_size: 100,
                exporter_addresses: Vec::new(),
            },
            m,
        );
        t.signals.push(Box::new(spans));
        let mut client = Conn::new(1, Role::Client);
        let mut server = Conn::new(2, Role::Server);
        let tuple = &mut server.header.tuple;
        std::mem::swap(&mut tuple.local_addr, &mut tuple.remote_addr);
        std::mem::swap(&mut tuple.local_port, &mut tuple.remote_port);
        server.header.fd = 8;
        feed(&mut t, &client.with_kind(EventKind::Open), b"");
        feed(&mut t, &server.with_kind(EventKind::Open), b"");
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let reply = b"$1\r\nv\r\n";
        for i in 0..gets {
            let h = client.call(Syscall::Write, Direction::Transmit, get);
            feed(&mut t, &h, get);
            let h = server.call(Syscall::Read, Direction::Receive, get);
            feed(&mut t, &h, get);
            let h = server.call(Syscall::Write, Direction::Transmit, reply);
            feed(&mut t, &h, reply);
            let h = client.call(Syscall::Read, Direction::Receive, reply);
            feed(&mut t, &h, reply);
            if junk_after == Some(i) {
                // On the server's side only: its framing is lost, its order broken.
                let junk = b"*x\r\n";
                let h = server.call(Syscall::Read, Direction::Receive, junk);
                feed(&mut t, &h, junk);
            }
        }
        let mut out = Vec::new();
        while let Ok(span) = rx.try_recv() {
            out.push(span);
        }
        out
    }

    #[test]
    fn both_ends_on_this_node_link_request_by_request() {
        let spans = both_ends(3, None);
        let client: Vec<_> = spans.iter().filter(|s| s.kind == Role::Client).collect();
        let server: Vec<_> = spans.iter().filter(|s| s.kind == Role::Server).collect();
        assert_eq!((client.len(), server.len()), (3, 3));
        for (c, s) in client.iter().zip(&server) {
            assert_eq!(s.trace_id, c.trace_id);
            assert_eq!(s.parent, Some((c.span_id, true)));
        }
        assert_ne!(client[0].trace_id, client[1].trace_id);
    }

    #[test]
    fn an_end_that_lost_framing_is_not_linked() {
        let spans = both_ends(3, Some(0));
        let server: Vec<_> = spans.iter().filter(|s| s.kind == Role::Server).collect();
        let client: Vec<_> = spans.iter().filter(|s| s.kind == Role::Client).collect();
        assert_eq!((client.len(), server.len()), (3, 3), "{spans:?}");
        // Before the loss: linked.
        assert_eq!(server[0].parent, Some((client[0].span_id, true)));
        // After it the server's requests are not linked, to anything.
        for s in &server[1..] {
            assert_eq!(s.parent, None, "{s:?}");
            assert!(client.iter().all(|c| c.trace_id != s.trace_id));
        }
    }

    /// A tracker with spans on (always sampled) and thread-based linking, and the
    /// receiving end of its span queue.
    fn tracker_with_spans() -> (
        Tracker,
        tokio::sync::mpsc::Receiver<crate::signals::spans::FinishedSpan>,
    ) {
        use crate::signals::spans::{Sampler, SpanOptions, Spans};
        let (mut t, m, _) = tracker(20);
        let (spans, rx) = Spans::new(
            SpanOptions {
                sampler: Sampler::AlwaysOn,
                slow_threshold: std::time::Duration::ZERO,
                queue_size: 100,
                exporter_addresses: Vec::new(),
            },
            m,
        );
        t.signals.insert(0, Box::new(spans));
        t.threads = Some(Threads::default());
        (t, rx)
    }

    /// A connection from `local` to `remote` (ports on 127.0.0.1), made by thread `tid`
    /// of process 100, seen from its handshake.
    fn conn_between(id: u64, role: Role, local: u16, remote: u16, tid: u32) -> Conn {
        let mut c = Conn::new(id, role);
        let tuple = &mut c.header.tuple;
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.local_port = local;
        tuple.remote_port = remote;
        c.header.tid = tid;
        c.header.fd = id as i32;
        c
    }

    /// One call of `c` on thread `tid` moving `bytes`.
    fn on(t: &mut Tracker, c: &mut Conn, tid: u32, direction: Direction, bytes: &[u8]) {
        c.header.tid = tid;
        let syscall = match direction {
            Direction::Transmit => Syscall::Write,
            Direction::Receive => Syscall::Read,
        };
        let h = c.call(syscall, direction, bytes);
        feed(t, &h, bytes);
    }

    fn drain(
        rx: &mut tokio::sync::mpsc::Receiver<crate::signals::spans::FinishedSpan>,
    ) -> Vec<crate::signals::spans::FinishedSpan> {
        let mut out = Vec::new();
        while let Ok(span) = rx.try_recv() {
            out.push(span);
        }
        out
    }

    const GET_K: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    const REPLY_V: &[u8] = b"$1\r\nv\r\n";

    fn http_get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    const HTTP_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    /// A proxy's thread 500 serves HTTP (its caller on this node, thread 300) and calls
    /// Redis (the server on this node, thread 900) for each request, one at a time.
    #[test]
    fn a_thread_serving_one_request_at_a_time_links_its_calls_under_it() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut caller = conn_between(1, Role::Client, 41000, 8080, 300);
        let mut proxy_in = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut proxy_out = conn_between(3, Role::Client, 42000, 6379, 500);
        let mut redis = conn_between(4, Role::Server, 6379, 42000, 900);
        for c in [&caller, &proxy_in, &proxy_out, &redis] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        for i in 0..2 {
            let get = http_get(&format!("/r/{i}"));
            on(&mut t, &mut caller, 300, Direction::Transmit, &get);
            on(&mut t, &mut proxy_in, 500, Direction::Receive, &get);
            on(&mut t, &mut proxy_out, 500, Direction::Transmit, GET_K);
            on(&mut t, &mut redis, 900, Direction::Receive, GET_K);
            on(&mut t, &mut redis, 900, Direction::Transmit, REPLY_V);
            on(&mut t, &mut proxy_out, 500, Direction::Receive, REPLY_V);
            on(&mut t, &mut proxy_in, 500, Direction::Transmit, HTTP_OK);
            on(&mut t, &mut caller, 300, Direction::Receive, HTTP_OK);
        }
        let spans = drain(&mut rx);
        assert_eq!(spans.len(), 8, "{spans:#?}");
        // In the order they ended: redis server, proxy's client, proxy's server, caller.
        let mut traces = Vec::new();
        for request in spans.chunks(4) {
            let [redis, call, served, caller] = request else {
                unreachable!()
            };
            assert_eq!(
                (redis.kind, call.kind, served.kind, caller.kind),
                (Role::Server, Role::Client, Role::Server, Role::Client)
            );
            assert_eq!(caller.parent, None);
            assert_eq!(served.parent, Some((caller.span_id, true)), "{served:?}");
            assert_eq!(call.parent, Some((served.span_id, false)), "{call:?}");
            assert_eq!(redis.parent, Some((call.span_id, true)), "{redis:?}");
            for span in [redis, call, served] {
                assert_eq!(span.trace_id, caller.trace_id, "{span:?}");
            }
            traces.push(caller.trace_id);
        }
        assert_ne!(traces[0], traces[1]);
        assert_eq!(t.threads.as_ref().unwrap().held(), (0, 0, 0));
    }

    /// An event loop (thread 500) with two requests open at once: its calls are not
    /// linked, then or later; the caller-to-server links by connection still are.
    #[test]
    fn a_thread_with_two_requests_open_links_nothing_then_or_later() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut in_a = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut in_b = conn_between(5, Role::Server, 8080, 41001, 500);
        let mut out = conn_between(3, Role::Client, 42000, 6379, 500);
        for c in [&in_a, &in_b, &out] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        on(&mut t, &mut in_a, 500, Direction::Receive, &http_get("/a"));
        on(&mut t, &mut in_b, 500, Direction::Receive, &http_get("/b"));
        on(&mut t, &mut out, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut out, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut in_a, 500, Direction::Transmit, HTTP_OK);
        on(&mut t, &mut in_b, 500, Direction::Transmit, HTTP_OK);
        // Later, one request open at a time: the thread is known to multiplex.
        on(&mut t, &mut in_a, 500, Direction::Receive, &http_get("/c"));
        on(&mut t, &mut out, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut out, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut in_a, 500, Direction::Transmit, HTTP_OK);
        let spans = drain(&mut rx);
        assert_eq!(spans.len(), 5, "{spans:#?}");
        for span in &spans {
            assert_eq!(span.parent, None, "{span:?}");
        }
        let traces: std::collections::HashSet<_> = spans.iter().map(|s| s.trace_id).collect();
        assert_eq!(traces.len(), 5);
    }

    /// A call made while its thread had one request open is that request's child, even
    /// when the thread opens a second request before either ends (from then on the
    /// thread links nothing).
    #[test]
    fn a_call_keeps_its_parent_when_its_thread_opens_another_request_after_it() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut in_a = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut in_b = conn_between(5, Role::Server, 8080, 41001, 500);
        let mut out_a = conn_between(3, Role::Client, 42000, 6379, 500);
        let mut out_b = conn_between(6, Role::Client, 42001, 6379, 500);
        for c in [&in_a, &in_b, &out_a, &out_b] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        on(&mut t, &mut in_a, 500, Direction::Receive, &http_get("/a"));
        on(&mut t, &mut out_a, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut in_b, 500, Direction::Receive, &http_get("/b"));
        on(&mut t, &mut out_b, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut out_a, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut out_b, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut in_b, 500, Direction::Transmit, HTTP_OK);
        on(&mut t, &mut in_a, 500, Direction::Transmit, HTTP_OK);
        let spans = drain(&mut rx);
        let [call_a, call_b, served_b, served_a] = &spans[..] else {
            panic!("{spans:#?}")
        };
        assert_eq!(call_a.parent, Some((served_a.span_id, false)));
        assert_eq!(call_a.trace_id, served_a.trace_id);
        assert_eq!(
            (call_b.parent, served_b.parent, served_a.parent),
            (None, None, None)
        );
        // The thread, marked; the call's claim, until its grace ends.
        assert_eq!(t.threads.as_ref().unwrap().held(), (1, 1, 0));
    }

    /// On loopback the client's read of a response can be stamped before the server's
    /// write of it: the server end still joins the call's trace.
    #[test]
    fn a_calls_server_end_seen_after_the_call_ended_joins_its_trace() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut served = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut out = conn_between(3, Role::Client, 42000, 6379, 500);
        let mut redis = conn_between(4, Role::Server, 6379, 42000, 900);
        for c in [&served, &out, &redis] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        on(
            &mut t,
            &mut served,
            500,
            Direction::Receive,
            &http_get("/a"),
        );
        on(&mut t, &mut out, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut redis, 900, Direction::Receive, GET_K);
        on(&mut t, &mut out, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut redis, 900, Direction::Transmit, REPLY_V);
        on(&mut t, &mut served, 500, Direction::Transmit, HTTP_OK);
        let spans = drain(&mut rx);
        let [call, redis, served] = &spans[..] else {
            panic!("{spans:#?}")
        };
        assert_eq!(call.parent, Some((served.span_id, false)));
        assert_eq!(redis.parent, Some((call.span_id, true)));
        assert_eq!(
            (call.trace_id, redis.trace_id),
            (served.trace_id, served.trace_id)
        );
        // The claim was used.
        assert_eq!(t.threads.as_ref().unwrap().held(), (0, 0, 0));
    }

    /// A process that answered a request on another thread than the one that read it
    /// (a thread pool): its threads say nothing, none of its calls are linked after.
    #[test]
    fn a_process_that_hands_requests_between_threads_is_not_linked() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut served = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut out = conn_between(3, Role::Client, 42000, 6379, 500);
        for c in [&served, &out] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        on(
            &mut t,
            &mut served,
            500,
            Direction::Receive,
            &http_get("/a"),
        );
        on(&mut t, &mut served, 501, Direction::Transmit, HTTP_OK);
        on(
            &mut t,
            &mut served,
            500,
            Direction::Receive,
            &http_get("/b"),
        );
        on(&mut t, &mut out, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut out, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut served, 500, Direction::Transmit, HTTP_OK);
        let spans = drain(&mut rx);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        for span in &spans {
            assert_eq!(span.parent, None, "{span:?}");
        }
    }

    /// A server request carrying a traceparent: its span and its thread's calls are in
    /// the caller's trace, the server span under the caller's span.
    #[test]
    fn a_threads_calls_join_the_trace_of_its_requests_traceparent() {
        let (mut t, mut rx) = tracker_with_spans();
        let mut served = conn_between(2, Role::Server, 8080, 41000, 500);
        let mut out = conn_between(3, Role::Client, 42000, 6379, 500);
        for c in [&served, &out] {
            feed(&mut t, &c.with_kind(EventKind::Open), b"");
        }
        let get = b"GET /t HTTP/1.1\r\nHost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        on(&mut t, &mut served, 500, Direction::Receive, get);
        on(&mut t, &mut out, 500, Direction::Transmit, GET_K);
        on(&mut t, &mut out, 500, Direction::Receive, REPLY_V);
        on(&mut t, &mut served, 500, Direction::Transmit, HTTP_OK);
        let spans = drain(&mut rx);
        let [call, server] = &spans[..] else {
            panic!("{spans:#?}")
        };
        let trace = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        assert_eq!((call.trace_id, server.trace_id), (trace, trace));
        assert_eq!(
            server.parent,
            Some(([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7], true))
        );
        assert_eq!(call.parent, Some((server.span_id, false)));
    }

    #[test]
    fn idle_connections_age_out_and_the_table_is_bounded() {
        let (mut t, m, _) = tracker(2);
        for i in 0..5u64 {
            let mut c = Conn::new(i + 1, Role::Client);
            c.header.exit_ns = 10;
            let h = c.moved(Syscall::Read, Direction::Receive, 1, 0);
            feed(&mut t, &h, b"");
        }
        // Two fit; the other three are counted as untracked but their bytes still count.
        assert_eq!(t.len(), 2);
        assert_eq!(m.connections_untracked.get(), 3);
        text_has(&m, "nodetap_tcp_bytes_total{direction=\"receive\",role=\"client\",service_name=\"redis\"} 5\n");
        assert_eq!(t.sweep(10 + 1_000), 2);
        assert_eq!(m.connections_expired.get(), 2);
        assert!(t.is_empty() && t.fds.is_empty());
    }
}
