//! Thread-based linking: a server request and the client requests its handling thread
//! makes while it is open are parent and children, but only where that is unambiguous.
//!
//! A server request is open on the thread whose read completed its head (the session's
//! `pending` grew on that read) until its response is complete. A client request whose
//! first bytes a thread sends while that thread has exactly one server request open is
//! that request's child. Never a guess under concurrency:
//!
//! - a thread seen with two server requests open at once (an event loop such as nginx,
//!   or pipelined requests) is never linked again;
//! - a process that answered a server request on another thread than the one that read
//!   it (a thread pool, a work-stealing runtime, goroutines moving between threads) is
//!   never linked again: its threads say nothing about which request a call serves;
//! - only protocols that answer in order (the request's place in the connection's order
//!   names it), on connections whose order is intact.
//!
//! The ids come from keys, so no span waits for another: the parent server span's id
//! derives from its [`RequestKey`], and its trace is decided when it opens (its
//! `traceparent`, its client end on this node, or its own key), so children that end
//! before it can name both. A child whose server end is on this node too passes its
//! trace on to that server span ([`ThreadContext::Downstream`]).

use std::collections::{HashMap, HashSet, VecDeque};

use agent_common::Role;

use super::{record::link_key, Connection};
use crate::{
    protocols::Protocol,
    signals::{spans::TraceParent, ParentRef, RequestKey, ThreadContext, TraceSource},
};

/// Most threads, processes and claims whose state is kept; past it new ones are not
/// linked (never linked wrongly).
const MAX_ENTRIES: usize = 65_536;

/// How long a client request's claim outlives the request: its server end's records can
/// come after its own last one (on loopback the reader's `recvmsg` can return before the
/// writer's `sendmsg` does, so the client's read of the response may be stamped before
/// the server's write of it).
const CLAIM_GRACE_NS: u64 = 100_000_000;

/// One request a connection has open, in the session's order (the front is the oldest).
#[derive(Clone, Copy, Debug)]
pub(super) struct Opened {
    /// The thread whose call opened it: the reader of a server request, the writer of a
    /// client request.
    tid: u32,
    /// A client request's parent, when its thread had one server request open.
    child: Option<ThreadContext>,
}

enum ThreadState {
    /// Exactly one server request open on the thread.
    One(OpenServer),
    /// Seen with two server requests open at once: never linked again.
    Concurrent,
}

struct OpenServer {
    key: RequestKey,
    trace: TraceSource,
    parent: Option<ParentRef>,
}

/// The threads with a server request open, and what their client requests claimed.
#[derive(Default)]
pub struct Threads {
    threads: HashMap<u32, ThreadState>,
    /// Processes seen answering a request on another thread than the one that read it.
    handoff: HashSet<u32>,
    /// Open server requests a client request named as parent: their spans must carry the
    /// derived id, even when their thread has another request open by the time they end.
    parents: HashMap<RequestKey, (TraceSource, Option<ParentRef>)>,
    /// Open client requests with a thread parent (by the client connection and the
    /// request's place): the trace their server end's span joins when that end is on
    /// this node too.
    claims: HashMap<RequestKey, TraceSource>,
    /// Claims of client requests that completed, with when: removed after the grace.
    retired: VecDeque<(RequestKey, u64)>,
}

impl Threads {
    /// A connection's requests completed (`sequence` is the first one's place): the
    /// context each one's span takes, in order. `tid` is the thread whose call completed
    /// them (`None` when the connection ended).
    pub(super) fn completed(
        &mut self,
        conn: &mut Connection,
        first_sequence: u64,
        count: usize,
        tid: Option<u32>,
        pid: u32,
        out: &mut Vec<Option<ThreadContext>>,
    ) {
        out.clear();
        if !self.following(conn) || conn.opened.len() < count {
            self.release(conn);
            out.resize(count, None);
            return;
        }
        while let Some(&(key, at)) = self.retired.front() {
            if conn.last_ns.saturating_sub(at) < CLAIM_GRACE_NS {
                break;
            }
            self.claims.remove(&key);
            self.retired.pop_front();
        }
        for i in 0..count as u64 {
            let sequence = first_sequence + i;
            let opened = conn.opened.pop_front().expect("checked");
            let key = RequestKey {
                conn: conn.id,
                sequence,
            };
            let context = match conn.role {
                Role::Server => self.closed_server(opened.tid, key, tid, pid).or_else(|| {
                    let link = conn.peer.map(|peer| RequestKey {
                        conn: peer,
                        sequence,
                    })?;
                    let trace = self.claims.remove(&link)?;
                    Some(ThreadContext::Downstream { trace })
                }),
                Role::Client => {
                    if opened.child.is_some() {
                        self.retired.push_back((key, conn.last_ns));
                    }
                    opened.child
                }
                Role::Unknown => None,
            };
            out.push(context);
        }
    }

    /// After a chunk was fed and what it completed recorded: the requests it opened, each
    /// on the thread `tid` of process `pid` that made the call.
    pub(super) fn opened(&mut self, conn: &mut Connection, protocol: Protocol, tid: u32, pid: u32) {
        if !self.following(conn) {
            return;
        }
        let Some((_, session)) = conn.protocol.session_mut() else {
            return;
        };
        let pending = session.pending();
        if pending < conn.opened.len() {
            // The session dropped requests the table did not see end: out of step.
            self.release(conn);
            return;
        }
        let new = pending - conn.opened.len();
        if new == 0 {
            return;
        }
        match conn.role {
            Role::Server => {
                let sequence = conn.requests_done + conn.opened.len() as u64;
                let key = RequestKey {
                    conn: conn.id,
                    sequence,
                };
                if new > 1 {
                    self.threads.insert(tid, ThreadState::Concurrent);
                } else {
                    match self.threads.get(&tid) {
                        Some(ThreadState::Concurrent) => {}
                        Some(ThreadState::One(_)) => {
                            self.threads.insert(tid, ThreadState::Concurrent);
                        }
                        None if self.threads.len() >= MAX_ENTRIES => {}
                        None => {
                            let traceparent = session
                                .newest_traceparent()
                                .and_then(|t| std::str::from_utf8(t).ok())
                                .and_then(TraceParent::parse);
                            let (trace, parent) =
                                match (traceparent, link_key(conn, protocol, sequence, None)) {
                                    (Some(tp), _) => (
                                        TraceSource::Header {
                                            trace_id: tp.trace_id,
                                            sampled: tp.sampled,
                                        },
                                        Some(ParentRef::Remote(tp.parent_id)),
                                    ),
                                    (None, Some(link)) => {
                                        let upstream = RequestKey {
                                            conn: link.client_conn,
                                            sequence: link.sequence,
                                        };
                                        let trace = self
                                            .claims
                                            .get(&upstream)
                                            .copied()
                                            .unwrap_or(TraceSource::Link(link));
                                        (trace, Some(ParentRef::Client(link)))
                                    }
                                    (None, None) => (TraceSource::Own(key), None),
                                };
                            self.threads
                                .insert(tid, ThreadState::One(OpenServer { key, trace, parent }));
                        }
                    }
                }
                conn.opened
                    .extend(std::iter::repeat_n(Opened { tid, child: None }, new));
            }
            Role::Client => {
                // Claimed only with room for the claims: a child whose server end on this
                // node could not find its trace would name a parent in another trace.
                let room =
                    self.parents.len() < MAX_ENTRIES && self.claims.len() + new <= MAX_ENTRIES;
                let child = if self.handoff.contains(&pid) || !room {
                    None
                } else {
                    match self.threads.get(&tid) {
                        Some(ThreadState::One(server)) => {
                            self.parents
                                .insert(server.key, (server.trace, server.parent));
                            Some((server.key, server.trace))
                        }
                        _ => None,
                    }
                };
                for _ in 0..new {
                    let sequence = conn.requests_done + conn.opened.len() as u64;
                    let context = child.map(|(parent, trace)| {
                        // Its server end may be on this node, not seen yet (its
                        // first read comes after this send): claimed either way.
                        let key = RequestKey {
                            conn: conn.id,
                            sequence,
                        };
                        self.claims.insert(key, trace);
                        ThreadContext::Child { parent, trace }
                    });
                    conn.opened.push_back(Opened {
                        tid,
                        child: context,
                    });
                }
            }
            Role::Unknown => {}
        }
    }

    /// The connection ends: its open requests never complete.
    pub(super) fn ended(&mut self, conn: &mut Connection) {
        self.release(conn);
    }

    /// Whether the connection's open requests are followed: a protocol that answers in
    /// order, an order that is intact. A connection that stops being followed forgets
    /// what it had open.
    fn following(&mut self, conn: &mut Connection) -> bool {
        if conn.threads_off {
            return false;
        }
        let in_order = conn
            .protocol
            .session_mut()
            .is_some_and(|(protocol, _)| protocol.in_order());
        if conn.order_broken || !in_order {
            self.release(conn);
            return false;
        }
        true
    }

    /// Forgets a connection's open requests (and follows it no more).
    fn release(&mut self, conn: &mut Connection) {
        conn.threads_off = true;
        for (i, opened) in conn.opened.drain(..).enumerate() {
            let key = RequestKey {
                conn: conn.id,
                sequence: conn.requests_done + i as u64,
            };
            match conn.role {
                Role::Server => {
                    if let Some(ThreadState::One(server)) = self.threads.get(&opened.tid) {
                        if server.key == key {
                            self.threads.remove(&opened.tid);
                        }
                    }
                    self.parents.remove(&key);
                }
                _ => {
                    self.claims.remove(&key);
                }
            }
        }
    }

    /// A server request completed: its thread has none open any more. Its context, if a
    /// client request named it as parent.
    fn closed_server(
        &mut self,
        opener: u32,
        key: RequestKey,
        closer: Option<u32>,
        pid: u32,
    ) -> Option<ThreadContext> {
        if closer.is_some_and(|closer| closer != opener)
            && self.handoff.len() < MAX_ENTRIES
            && pid != 0
        {
            self.handoff.insert(pid);
        }
        if let Some(ThreadState::One(server)) = self.threads.get(&opener) {
            if server.key == key {
                self.threads.remove(&opener);
            }
        }
        let (trace, parent) = self.parents.remove(&key)?;
        Some(ThreadContext::Parent { key, trace, parent })
    }

    /// Threads, claims and claimed parents held (for tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize, usize) {
        (self.threads.len(), self.claims.len(), self.parents.len())
    }
}
