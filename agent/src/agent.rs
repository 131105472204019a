//! The agent's life: checks, load, read events, serve, shut down cleanly.

use std::{sync::Arc, time::Duration};

use agent_common::Tier;
use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, net::TcpListener, signal::unix::SignalKind, sync::Notify};

use crate::{
    capture::{
        budget::{process_cpu_seconds, CpuBudget},
        event::decode,
        instructions::InstructionSink,
        monotonic_ns,
        rings::Rings,
        Tracker, TrackerOptions,
    },
    config::Config,
    metadata::{
        cgroup::{CgroupResolver, CreatedCgroups},
        identity::{Identity, PodDirectory, SharedZones},
        kubernetes::{self, KubeIndex, KubePods, KubeStats},
        local_zone::{LocalZoneSettings, ZoneReport},
        zones::ZoneSource,
    },
    metrics::{Metrics, ProbeLabels, ProbeRunLabels, ReasonLabels, TierLabels, ZoneInfoLabels},
    network::FlowTables,
    preflight,
    probes::{self, ClosedMap, HookStatus, InstructionMaps, KernelCounters, LoadOptions, Need},
    server,
};

/// At shutdown, how long the reader waits for records still on their way into the rings
/// before its last drain.
const FINAL_DRAIN_DELAY: Duration = Duration::from_millis(20);

/// The reader drains the ring buffer at least this often: the kernel wakes it only when
/// `wakeup_bytes` are waiting, so quiet periods are picked up by this timer.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// Also the report interval of counts-only connections (see `MAP_REPORT_EPOCH`).
/// The window over which the agent's CPU time is compared with its budget.
const BUDGET_INTERVAL: Duration = Duration::from_secs(1);
const STATS_INTERVAL: Duration = Duration::from_nanos(agent_common::DEFAULT_REPORT_INTERVAL_NS);
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    let report = preflight::run();
    eprint!("{}", report.render());
    report.check()?;
    raise_memlock_limit();

    let web = match &config.web_config_file {
        Some(path) => server::web_config::WebConfig::load(path)
            .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))?,
        None => server::web_config::WebConfig::default(),
    };
    server::check(&web)
        .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))
        .context("--web.config.file: the TLS certificate or key cannot be used")?;

    // Bind before loading anything, so a busy port fails fast and leaves nothing behind.
    let listener = if config.check_only {
        None
    } else {
        Some(TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (choose another address with --listen or NODETAP_LISTEN)",
                config.listen
            )
        })?)
    };

    let loaded = probes::load(&LoadOptions {
        cgroup2: report.cgroup.v2_root(),
        flow_entries: config.network_flow_entries,
        capture_mode: config.capture_mode,
        call_capture: config.capture_bytes,
        ringbuf_bytes: config.ringbuf_bytes,
        wakeup_bytes: config.wakeup_bytes,
    });
    let mut probes = match loaded {
        Ok(p) => {
            eprintln!("  capture tier:  {}", describe_tier(p.tier));
            eprint!("{}", render_hooks(&p.hooks));
            p
        }
        Err(failure) => {
            eprint!("{}", render_hooks(&failure.hooks));
            return Err(failure.error).context("nodetap cannot capture without its kernel hooks");
        }
    };
    if config.check_only {
        eprintln!("  result:        all required hooks attached; exiting (--check)");
        return Ok(());
    }

    let metrics = Arc::new(
        Metrics::with_options(
            env!("CARGO_PKG_VERSION"),
            config.max_series,
            config.spans.is_some(),
        )
        .with_route_limit(config.http_route_limit, config.http_routes.clone()),
    );
    for hook in &probes.hooks {
        metrics
            .probe_attached
            .get_or_create(&ProbeLabels {
                probe: hook.tracepoint.clone(),
                required: if hook.need == Need::Required {
                    "true"
                } else {
                    "false"
                },
            })
            .set(i64::from(hook.error.is_none()));
    }
    metrics
        .capture_info
        .get_or_create(&TierLabels {
            tier: probes.tier.label(),
        })
        .set(1);
    let maps = probes.take_maps()?;
    let rings = Rings::new(maps.rings, maps.rings_exclusive)
        .context("reading the kernel's ring buffers")?;
    metrics.ringbuf_size.set(rings.capacity() as i64);
    let flow_tables = match probes.take_flow_tables(config.network_flow_entries) {
        Some(Ok(tables)) => {
            metrics
                .network_flow_capacity
                .set(i64::from(tables.capacity));
            Some(tables)
        }
        Some(Err(e)) => {
            log::warn!("IP byte accounting off: {}", crate::error_chain(&e));
            None
        }
        None => None,
    };
    let zones = crate::metadata::zones::ZoneMap::new(
        crate::metadata::zones::UNKNOWN,
        &config.zones.subnets,
    )
    .context("zones.subnets")?;
    let zones = SharedZones::new(zones);
    let pods: Option<Arc<dyn PodDirectory>> = if config.kubernetes.is_enabled() {
        let index = KubeIndex::new_shared();
        let stats = Arc::new(KubeStats::default());
        let watch = kubernetes::spawn(config.kubernetes.clone(), index.clone(), stats.clone());
        tokio::spawn(async move {
            match watch.await {
                Ok(Err(e)) => log::error!(
                    "kubernetes metadata stopped: {}; pods are labelled by process name",
                    crate::error_chain(&e)
                ),
                Err(e) => log::error!("kubernetes metadata task failed: {e}"),
                Ok(Ok(())) => {}
            }
        });
        tokio::spawn(kubernetes::follow(
            config.kubernetes.node_name.clone(),
            local_zone_settings(&config),
            index.clone(),
            zones.clone(),
            zone_report(metrics.clone()),
        ));
        tokio::spawn(export_kube_stats(stats, metrics.clone()));
        Some(Arc::new(KubePods(index)))
    } else {
        tokio::spawn(crate::metadata::local_zone::resolve(
            local_zone_settings(&config),
            zones.clone(),
            zone_report(metrics.clone()),
        ));
        None
    };
    let (spans, exporter) = match &config.spans {
        Some(spans_config) => {
            let (signal, exporter) = start_spans(spans_config, &config, &zones, &metrics)
                .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))
                .context("cannot export spans (--otlp-endpoint)")?;
            (Some(signal), Some(exporter))
        }
        None => (None, None),
    };
    let created = match probes.take_cgroup_paths() {
        Some(Ok(map)) => Some(Box::new(KernelCgroupPaths(map)) as Box<dyn CreatedCgroups>),
        Some(Err(e)) => {
            log::warn!(
                "cgroups created after each walk of the hierarchy are named only if still there: {}",
                crate::error_chain(&e)
            );
            None
        }
        None => None,
    };
    let resolver = report.cgroup.v2_root().map(|root| {
        let mut resolver = CgroupResolver::new(root);
        // Now, not at the first record: a cgroup that goes before then was still seen
        // (those created from here on, the kernel reports as they are created).
        if let Err(e) = resolver.rescan() {
            log::warn!("{}", crate::error_chain(&e));
        }
        match created {
            Some(created) => resolver.with_created(created),
            None => resolver,
        }
    });
    let identity = Identity::new(resolver, pods, zones).with_procfs(&config.node.procfs);
    let tracker = Tracker::new(
        metrics.clone(),
        &config.node.procfs,
        TrackerOptions {
            idle_timeout_ns: config.connection_idle_timeout.as_nanos() as u64,
            max_connections: config.max_connections,
            request_timeout_ns: config.request_timeout.as_nanos() as u64,
            http_routes: config.http_routes.clone(),
            spans,
        },
        identity,
        Box::new(KernelInstructions::new(maps.instructions)),
    );
    let stop_reader = Arc::new(Notify::new());
    let mut reader = tokio::spawn(read_events(
        rings,
        maps.counters,
        maps.closed,
        flow_tables,
        tracker,
        metrics.clone(),
        config.cpu_budget,
        stop_reader.clone(),
    ));

    // Start-up is over: what it allocated and freed goes back to the kernel, and from
    // now on what scrapes and bursts free (see `heap`).
    tokio::spawn(crate::heap::trim_periodically());
    let listener = listener.expect("bound above");
    log::info!(
        "serving metrics on {}://{}/metrics{}",
        if web.tls.is_some() { "https" } else { "http" },
        listener.local_addr().unwrap_or(config.listen),
        if web.users.is_empty() {
            ""
        } else {
            " (basic auth)"
        }
    );
    let node = Arc::new(crate::collectors::NodeCollectors::new(&config.node));
    let metrics_push = match &config.metrics_export {
        Some(push) => Some(
            start_metrics_export(push, &config, &metrics, &node)
                .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))
                .context("cannot push metrics (--otlp-metrics-endpoint)")?,
        ),
        None => None,
    };
    let router = server::router(metrics, node, server::Readiness::new(&probes.hooks), &web);
    server::serve(listener, router, &web, shutdown_signal())
        .await
        .context("metrics endpoint failed")?;

    log::info!("shutting down: last records, spans and metrics, then detaching kernel programs");
    // The reader takes what the rings still hold (the last requests' spans and counts)
    // and stops; the tracker, and with it the span queue's sender, goes with it.
    stop_reader.notify_one();
    // One deadline for all the steps: SIGTERM under load must end within 5 s (a
    // DaemonSet's rollout and systemd's stop wait on it), whatever the endpoints do.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
    if tokio::time::timeout_at(deadline, &mut reader)
        .await
        .is_err()
    {
        log::warn!("the last kernel records were not all read at shutdown");
        reader.abort();
        let _ = reader.await;
    }
    if let Some(exporter) = exporter {
        // The exporter sends what is queued and stops, or is left behind.
        if tokio::time::timeout_at(deadline, exporter).await.is_err() {
            log::warn!("spans still queued at shutdown were not exported");
        }
    }
    if let Some(push) = metrics_push {
        // One last push, with the last requests and the spans' own counters in it.
        push.stop.notify_one();
        if tokio::time::timeout_at(deadline, push.task).await.is_err() {
            log::warn!("the last metrics push did not finish at shutdown");
        }
    }
    // Dropping the programs closes their links: nothing stays attached.
    drop(probes);
    Ok(())
}

/// The spans signal for the tracker and its exporter's task.
fn start_spans(
    spans_config: &crate::config::SpansConfig,
    config: &Config,
    zones: &SharedZones,
    metrics: &Arc<Metrics>,
) -> Result<
    (crate::signals::spans::Spans, tokio::task::JoinHandle<()>),
    crate::signals::spans::export::ExporterError,
> {
    use crate::signals::spans::{export::Exporter, Spans};
    let mut export = spans_config.export.clone();
    let zones = zones.clone();
    export.local_zone = Arc::new(move || {
        let zone = zones.read(|s| s.map.local_zone().to_owned());
        (zone != crate::metadata::zones::UNKNOWN).then_some(zone)
    });
    let mut node = vec![("host.name".to_owned(), host_name())];
    if config.kubernetes.is_enabled() {
        node.push((
            "k8s.node.name".to_owned(),
            config.kubernetes.node_name.clone(),
        ));
    }
    node.append(&mut export.resource);
    export.resource = node;
    log::info!(
        "exporting spans to {} ({:?}, sampler {}, slow threshold {:?})",
        export.endpoint,
        export.protocol,
        spans_config.spans.sampler,
        spans_config.spans.slow_threshold
    );
    let exporter = Exporter::new(export, metrics.clone())?;
    let (signal, queue) = Spans::new(spans_config.spans.clone(), metrics.clone());
    Ok((signal, tokio::spawn(exporter.run(queue))))
}

/// How long the shutdown steps together (the last records, the queued spans, the last
/// metrics push) may take before the agent goes on without what is left: under the 5 s
/// a clean exit must take, with room for detaching the programs.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(4);

/// The metrics push task, and what tells it to push a last time and stop.
struct MetricsPush {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// The metrics push task: the families `/metrics` serves, every interval.
fn start_metrics_export(
    push: &crate::config::MetricsExportConfig,
    config: &Config,
    metrics: &Arc<Metrics>,
    node: &Arc<crate::collectors::NodeCollectors>,
) -> Result<MetricsPush, crate::signals::spans::export::ExporterError> {
    let mut export = push.export.clone();
    let mut resource = vec![("host.name".to_owned(), host_name())];
    if config.kubernetes.is_enabled() {
        resource.push((
            "k8s.node.name".to_owned(),
            config.kubernetes.node_name.clone(),
        ));
    }
    resource.append(&mut export.resource);
    export.resource = resource;
    log::info!(
        "pushing metrics to {} ({:?}, every {:?}, {})",
        export.endpoint,
        export.protocol,
        push.interval,
        if push.delta { "delta" } else { "cumulative" }
    );
    let exporter = crate::signals::otlp_metrics::MetricsExporter::new(
        export,
        push.interval,
        push.delta,
        metrics.clone(),
    )?;
    let (metrics, node) = (metrics.clone(), node.clone());
    let scrape: crate::signals::otlp_metrics::Scrape =
        Arc::new(move || server::scrape_for_push(&metrics, &node));
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(exporter.run(scrape, stop.clone()));
    Ok(MetricsPush { stop, task })
}

/// This host's name (`host.name`), as uname(2) reports it.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte stays 0.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    }
}

fn describe_tier(tier: Tier) -> &'static str {
    match tier {
        Tier::Socket => {
            "socket (sock:sock_send_length/sock_recv_length; processes that do no networking run nothing)"
        }
        Tier::Syscall => {
            "syscall (syscall tracepoints: the kernel lacks sock_send_length, Linux < 6.3, or --capture-mode syscall)"
        }
    }
}

fn render_hooks(hooks: &[HookStatus]) -> String {
    let mut s = String::new();
    for h in hooks {
        let need = if h.need == Need::Required {
            "required"
        } else {
            "optional"
        };
        match &h.error {
            None => s.push_str(&format!("  hook:          {} attached\n", h.tracepoint)),
            Some(e) => {
                let level = if h.need == Need::Required {
                    "FAILED"
                } else {
                    "WARNING: not attached"
                };
                s.push_str(&format!(
                    "  hook:          {} {level} ({need}): {e}\n",
                    h.tracepoint
                ));
            }
        }
    }
    s
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels since 5.11");
    }
}

/// Wakes the reader whenever the kernel wakes one of the rings' waiters: one small task
/// per ring, each on its own copy of the ring's fd.
fn watch_rings(
    rings: &Rings,
    woken: &Arc<Notify>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    rings
        .fds()
        .map(|fd| {
            // SAFETY: the AsyncFd owns its copy of the fd, which stays open for as long as
            // it is registered.
            let fd = unsafe {
                AsyncFd::register_with_interest(
                    fd.try_clone_to_owned()?,
                    tokio::io::Interest::READABLE,
                )
            }?;
            let woken = woken.clone();
            Ok(tokio::spawn(async move {
                loop {
                    match fd.readable().await {
                        Ok(mut guard) => {
                            woken.notify_one();
                            guard.clear_ready();
                        }
                        Err(e) => {
                            log::error!("polling a ring buffer failed: {e}");
                            return;
                        }
                    }
                }
            }))
        })
        .collect()
}

/// The capture task: drains the rings into the tracker, reads the kernel's counters, and
/// at `stop` takes what the rings still hold and ends. Everything it owns is moved in.
#[allow(clippy::too_many_arguments)]
async fn read_events(
    mut rings: Rings,
    mut counters: KernelCounters,
    mut closed: ClosedMap,
    mut flow_tables: Option<FlowTables>,
    mut tracker: Tracker,
    metrics: Arc<Metrics>,
    cpu_budget: f64,
    stop: Arc<Notify>,
) {
    let woken = Arc::new(Notify::new());
    let watchers = match watch_rings(&rings, &woken) {
        Ok(watchers) => watchers,
        Err(e) => {
            log::error!("cannot poll the event ring buffers: {e}");
            return;
        }
    };
    // The watchers stop with the reader.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(|w| w.abort());
        }
    }
    let _watchers = AbortOnDrop(watchers);
    let ring = &mut rings;
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
    let mut sweep_tick = tokio::time::interval(SWEEP_INTERVAL);
    let mut network_tick = tokio::time::interval(crate::network::DRAIN_INTERVAL);
    network_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The CPU budget is checked once a second from the process's CPU time, never per record.
    let mut budget_tick = tokio::time::interval(BUDGET_INTERVAL);
    let mut budget = CpuBudget::new(cpu_budget);
    let mut cpu_seen = (process_cpu_seconds(), std::time::Instant::now());
    let mut lost_seen = [0u64; agent_common::DROP_REASONS];
    let mut missed_seen: std::collections::HashMap<String, u64> = Default::default();
    let mut states_seen = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = stop.notified() => {
                // Records of calls that returned just now may still be on their way into
                // the rings: a moment for them, then everything the rings hold.
                tokio::time::sleep(FINAL_DRAIN_DELAY).await;
                drain_closed(&mut closed, &mut tracker, &metrics);
                drain_at(ring, &mut tracker, &metrics, u64::MAX);
                return;
            }
            _ = woken.notified() => drain(ring, &mut tracker, &metrics),
            _ = drain_tick.tick() => drain(ring, &mut tracker, &metrics),
            _ = stats_tick.tick() => {
                // Counts-only connections report once per tick (the report interval).
                counters.next_report_epoch();
                for (i, (reason, total)) in counters.drops().into_iter().enumerate() {
                    let delta = total.saturating_sub(lost_seen[i]);
                    if delta > 0 {
                        lost_seen[i] = total;
                        if reason.loses_event() {
                            log::warn!("{delta} kernel events lost ({})", reason.label());
                        }
                    }
                    metrics.events_lost.get_or_create(&ReasonLabels { reason: reason.label() }).inc_by(delta);
                }
                for (probe, total) in counters.runs_missed() {
                    let seen = missed_seen.entry(probe.to_owned()).or_default();
                    let counter = metrics.probe_runs_missed.get_or_create(&ProbeRunLabels { probe: probe.to_owned() });
                    let delta = total.saturating_sub(*seen);
                    if delta > 0 {
                        *seen = total;
                        counter.inc_by(delta);
                        log::warn!("the kernel skipped {delta} runs of the {probe} hook (another tracing program held the CPU)");
                    }
                }
                metrics.ringbuf_waiting.set(ring.waiting() as i64);
                let states = counters.states();
                metrics.capture_states.inc_by(states.0.saturating_sub(states_seen.0));
                metrics.capture_non_tcp.inc_by(states.1.saturating_sub(states_seen.1));
                states_seen = states;
                // Records first, so a close parked while the ring was full comes after
                // the connection's other records.
                drain(ring, &mut tracker, &metrics);
                drain_closed(&mut closed, &mut tracker, &metrics);
            }
            _ = budget_tick.tick() => {
                // Whole windows only: an interval's first tick is immediate, and a
                // window of microseconds makes any CPU time look like many cores.
                let now = (process_cpu_seconds(), std::time::Instant::now());
                let wall = now.1 - cpu_seen.1;
                if wall >= BUDGET_INTERVAL / 2 {
                    let was_degraded = budget.degraded();
                    let used = (now.0 - cpu_seen.0) / wall.as_secs_f64();
                    let degraded = budget.update(now.0 - cpu_seen.0, wall.as_secs_f64());
                    cpu_seen = now;
                    if degraded != was_degraded {
                        // Said once per change, beside nodetap_capture_degraded: a user
                        // whose request metrics thin out must find why in the log too.
                        if degraded {
                            log::warn!(
                                "over the CPU budget ({used:.2} of {cpu_budget} cores): connections new to the agent are counted, not parsed (--cpu-budget)"
                            );
                        } else {
                            log::info!("back under the CPU budget: new connections are parsed again");
                        }
                    }
                    tracker.set_degraded(degraded);
                }
            }
            _ = sweep_tick.tick() => {
                tracker.sweep(monotonic_ns());
                tracker.identity_mut().zones().refresh_local_addrs();
            }
            _ = network_tick.tick(), if flow_tables.is_some() => {
                let tables = flow_tables.as_mut().expect("guarded");
                // Events first: the connection opens they carry name the processes
                // whose cgroups the flows belong to.
                drain(ring, &mut tracker, &metrics);
                match tables.drain() {
                    Ok(flows) => {
                        let overflow = tables.overflow_delta();
                        crate::network::record(&metrics, tracker.identity_mut(), &flows, overflow);
                    }
                    Err(e) => log::warn!("draining the flow table failed: {}", crate::error_chain(&e)),
                }
            }
        }
    }
}

fn drain(rings: &mut Rings, tracker: &mut Tracker, metrics: &Metrics) {
    drain_at(rings, tracker, metrics, monotonic_ns());
}

/// Drains the rings as of `now` (`u64::MAX`: every record they hold, at shutdown).
fn drain_at(rings: &mut Rings, tracker: &mut Tracker, metrics: &Metrics, now: u64) {
    rings.drain(now, |record| match decode(record) {
        Ok(event) => tracker.handle(&event),
        Err(e) => {
            metrics.events_undecodable.inc();
            log::debug!("undecodable event: {e}");
        }
    });
    tracker.after_drain(monotonic_ns());
}

/// Close records the kernel parked because the ring buffer was full.
fn drain_closed(closed: &mut ClosedMap, tracker: &mut Tracker, metrics: &Metrics) {
    let ids: Vec<u64> = closed.keys().filter_map(Result::ok).collect();
    for id in ids {
        let Ok(record) = closed.get(&id, 0) else {
            continue;
        };
        let _ = closed.remove(&id);
        // SAFETY: SummaryRecord is plain data; its bytes are what decode() reads.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const agent_common::SummaryRecord).cast::<u8>(),
                agent_common::SUMMARY_RECORD_LEN,
            )
        };
        match decode(bytes) {
            Ok(event) => tracker.handle(&event),
            Err(_) => {
                metrics.events_undecodable.inc();
            }
        }
    }
}

/// The paths the kernel recorded as cgroups were created (`CGROUP_PATHS`).
struct KernelCgroupPaths(probes::CgroupPathsMap);

impl std::fmt::Debug for KernelCgroupPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCgroupPaths")
    }
}

impl CreatedCgroups for KernelCgroupPaths {
    fn path_of(&mut self, id: u64) -> Option<String> {
        let entry = self.0.get(&id, 0).ok()?;
        let path = entry.path.get(..entry.len as usize)?;
        Some(String::from_utf8_lossy(path).into_owned())
    }
}

/// Instructions written to the kernel's maps.
struct KernelInstructions {
    maps: InstructionMaps,
    generation: u64,
    dirty: bool,
}

impl KernelInstructions {
    fn new(maps: InstructionMaps) -> Self {
        Self {
            maps,
            generation: 0,
            dirty: false,
        }
    }
}

impl InstructionSink for KernelInstructions {
    fn set(&mut self, conn_id: u64, instruction: agent_common::Instruction) {
        match self.maps.instructions.insert(conn_id, instruction, 0) {
            Ok(()) => self.dirty = true,
            // Fails safe: without an instruction the kernel copies what a parser needs.
            Err(e) => log::debug!("cannot write an instruction: {e}"),
        }
    }

    fn forget(&mut self, _conn_id: u64) {
        // The table is LRU: a closed connection's entry ages out without a syscall.
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.generation += 1;
        if let Err(e) = self.maps.generation.set(0, self.generation, 0) {
            log::debug!("cannot publish instructions: {e}");
        }
        self.dirty = false;
    }
}

/// What deciding this node's zone needs of the configuration.
fn local_zone_settings(config: &Config) -> LocalZoneSettings {
    LocalZoneSettings {
        zones: config.zones.clone(),
        imds_endpoint_set: config.imds_endpoint_set,
        sysfs: config.node.sysfs.clone(),
    }
}

/// This node's zone and its source, as `nodetap_zone_info` (one series at a time).
fn zone_report(metrics: Arc<Metrics>) -> ZoneReport {
    Arc::new(move |zone: &str, source: ZoneSource| {
        metrics.zone_info.clear();
        metrics
            .zone_info
            .get_or_create(&ZoneInfoLabels {
                zone: zone.to_owned(),
                source: source.as_str(),
            })
            .set(1);
    })
}

/// The Kubernetes watches' counters as `nodetap_kubernetes_*`, once a second.
async fn export_kube_stats(stats: Arc<KubeStats>, metrics: Arc<Metrics>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        metrics.kubernetes_pods.set(stats.pods.load(Relaxed) as i64);
        metrics
            .kubernetes_nodes
            .set(stats.nodes.load(Relaxed) as i64);
        let errors = stats.watch_errors.load(Relaxed);
        let exported = metrics.kubernetes_watch_errors.get();
        metrics
            .kubernetes_watch_errors
            .inc_by(errors.saturating_sub(exported));
    }
}
