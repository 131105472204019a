"""Writes the nodetap Grafana dashboards (deploy/grafana/*.json) from one description, so
every panel shares the same variables, datasource and selectors. Run after editing:
    python3 deploy/grafana/generate.py
tests/tests/dashboards.rs checks every panel's query against a real Prometheus, and the
exemplars of every latency panel against the spans the agent exported.

Latency panels query exemplars (the request-duration histograms carry the kept span's
trace_id and span_id). Grafana links an exemplar to its trace through the Prometheus
data source's exemplarTraceIdDestinations (label trace_id), not through the dashboard:
deploy/grafana/datasource.yml provisions that for any tracing data source."""
import json, os
OUT = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'k8s_namespace_name=~"$namespace", service_name=~"$service"'
R = "$__rate_interval"

def variables(zone_label):
    v = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
          "current": {}, "hide": 0, "refresh": 1, "options": []}]
    def q(name, label, query):
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "definition": query, "query": {"query": query, "refId": name},
                "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0}
    v.append(q("namespace", "Namespace", "label_values(nodetap_tcp_bytes_total, k8s_namespace_name)"))
    v.append(q("service", "Service", 'label_values(nodetap_tcp_bytes_total{k8s_namespace_name=~"$namespace"}, service_name)'))
    v.append(q("zone", "Zone" if zone_label == "src_zone" else "Peer zone", "label_values(nodetap_zone_info, zone)"))
    return v

class Board:
    def __init__(self, uid, title, zone_label="peer_zone"):
        self.uid, self.title, self.panels, self.y, self.x, self.zone_label = uid, title, [], 0, 0, zone_label
    def row(self, title):
        if self.x: self.y += 8; self.x = 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
    def panel(self, title, targets, unit, kind="timeseries", desc="", w=12, exemplars=False):
        if self.x + w > 24: self.y += 8; self.x = 0
        p = {"id": len(self.panels) + 1, "type": kind, "title": title, "description": desc, "datasource": DS,
             "gridPos": {"h": 8, "w": w, "x": self.x, "y": self.y},
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
             "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                         "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
             "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l,
                          "exemplar": exemplars}
                         for i, (e, l) in enumerate(targets)]}
        self.panels.append(p)
        self.x += w
        if self.x >= 24: self.x = 0; self.y += 8
    def write(self, name):
        d = {"uid": self.uid, "title": self.title, "tags": ["nodetap"], "timezone": "browser",
             "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
             "time": {"from": "now-1h", "to": "now"}, "templating": {"list": variables(self.zone_label)},
             "annotations": {"list": []}, "links": [
                 {"title": "nodetap dashboards", "type": "dashboards", "tags": ["nodetap"], "asDropdown": True}],
             "panels": self.panels}
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(d, f, indent=2); f.write("\n")

def zero_if_none(num, den):
    # errors / total, 0 (not "no data") when there are no errors
    return f"(({num}) or ({den}) * 0) / ({den})"

def hq(q, fam, sel, by):
    return f'histogram_quantile({q}, sum by (le, {by}) (rate({fam}_bucket{{{sel}}}[{R}])))'

Z = 'peer_zone=~"$zone"'
EXEMPLARS = ("Dots are exemplars: one kept span per histogram bucket, linked to its trace when the "
             "Prometheus data source has an exemplar trace ID destination for trace_id "
             "(deploy/grafana/datasource.yml). Needs spans on and Prometheus's exemplar storage.")
# ---------------- services overview
b = Board("nodetap-services", "nodetap / services overview")
SERVER = "http_server_request_duration_seconds_count|rpc_server_call_duration_seconds_count|db_server_operation_duration_seconds_count"
CLIENT = "http_client_request_duration_seconds_count|rpc_client_call_duration_seconds_count|db_client_operation_duration_seconds_count"
def errs(side):
    return (f'sum by (k8s_namespace_name, service_name) (rate(http_{side}_request_duration_seconds_count{{{SEL}, {Z}, http_response_status_code=~"5.."}}[{R}])'
            f' or rate(rpc_{side}_call_duration_seconds_count{{{SEL}, {Z}, rpc_grpc_status_code=~"2|4|12|13|14|15"}}[{R}])'
            f' or rate(db_{side}_operation_duration_seconds_count{{{SEL}, {Z}, error_type!=""}}[{R}]))')
def total(side, names):
    return f'sum by (k8s_namespace_name, service_name) (rate({{__name__=~"{names}", {SEL}, {Z}}}[{R}]))'
for side, names, label in [("server", SERVER, "Server side (requests a service answered)"), ("client", CLIENT, "Client side (requests a service made)")]:
    b.row(label)
    b.panel(f"Requests per second ({side})", [(total(side, names), "{{k8s_namespace_name}}/{{service_name}}")], "reqps",
            desc="HTTP, gRPC, Redis and PostgreSQL together, per workload.")
    b.panel(f"Error ratio ({side})", [(zero_if_none(errs(side), total(side, names)), "{{k8s_namespace_name}}/{{service_name}}")], "percentunit",
            desc="HTTP 5xx, gRPC UNKNOWN/DEADLINE_EXCEEDED/UNIMPLEMENTED/INTERNAL/UNAVAILABLE/DATA_LOSS, any database error.")
    b.panel(f"p99 latency ({side})", [(f'histogram_quantile(0.99, sum by (le, k8s_namespace_name, service_name) (rate({{__name__=~"{names.replace("_count", "_bucket")}", {SEL}, {Z}}}[{R}])))', "{{k8s_namespace_name}}/{{service_name}}")], "s", w=24,
            exemplars=True, desc=EXEMPLARS)
b.write("services.json")

# ---------------- databases
def db_board(uid, title, system, fname, error_desc):
    b = Board(uid, title)
    s = f'db_system_name="{system}", {SEL}, {Z}'
    for side in ["server", "client"]:
        fam = f"db_{side}_operation_duration_seconds"
        b.row(f"{side.capitalize()} side" + (" (the database's own view)" if side == "server" else " (per calling service)"))
        b.panel(f"Operations per second by command ({side})", [(f'sum by (db_operation_name) (rate({fam}_count{{{s}}}[{R}]))', "{{db_operation_name}}")], "ops")
        b.panel(f"Latency by command, p50 and p99 ({side})", [
            (hq(0.5, fam, s, "db_operation_name"), "p50 {{db_operation_name}}"),
            (hq(0.99, fam, s, "db_operation_name"), "p99 {{db_operation_name}}")], "s",
            exemplars=True, desc=EXEMPLARS)
        b.panel(f"Errors per second by {error_desc} ({side})", [(f'sum by (db_operation_name, error_type) (rate({fam}_count{{{s}, error_type!=""}}[{R}]))', "{{db_operation_name}} {{error_type}}")], "ops")
        if side == "client":
            b.panel("Operations per second by calling service and server", [(f'sum by (service_name, server_address, server_port) (rate({fam}_count{{{s}}}[{R}]))', "{{service_name}} -> {{server_address}}:{{server_port}}")], "ops")
        else:
            b.panel("Error ratio (server)", [(zero_if_none(f'sum(rate({fam}_count{{{s}, error_type!=""}}[{R}]))', f'sum(rate({fam}_count{{{s}}}[{R}]))'), "errors")], "percentunit")
    b.write(fname)
db_board("nodetap-redis", "nodetap / Redis", "redis", "redis.json", "error type")
db_board("nodetap-postgresql", "nodetap / PostgreSQL", "postgresql", "postgresql.json", "SQLSTATE class")

# ---------------- HTTP and gRPC
b = Board("nodetap-http-grpc", "nodetap / HTTP and gRPC")
for side in ["server", "client"]:
    fam = f"http_{side}_request_duration_seconds"
    s = f"{SEL}, {Z}"
    b.row(f"HTTP, {side} side")
    b.panel(f"HTTP requests per second by route and status ({side})", [(f'sum by (http_request_method, http_route, http_response_status_code) (rate({fam}_count{{{s}}}[{R}]))', "{{http_request_method}} {{http_route}} {{http_response_status_code}}")], "reqps")
    b.panel(f"HTTP latency p50 / p99 by route ({side})", [(hq(0.5, fam, s, "http_route"), "p50 {{http_route}}"), (hq(0.99, fam, s, "http_route"), "p99 {{http_route}}")], "s",
            exemplars=True, desc=EXEMPLARS)
    b.panel(f"HTTP 5xx ratio ({side})", [(zero_if_none(f'sum by (service_name) (rate({fam}_count{{{s}, http_response_status_code=~"5.."}}[{R}]))', f'sum by (service_name) (rate({fam}_count{{{s}}}[{R}]))'), "{{service_name}}")], "percentunit")
    b.panel(f"HTTP response body bytes per second ({side})", [(f'sum by (service_name, http_route) (rate(http_{side}_response_body_size_bytes_sum{{{s}}}[{R}]))', "{{service_name}} {{http_route}}")], "Bps")
for side in ["server", "client"]:
    fam = f"rpc_{side}_call_duration_seconds"
    s = f'rpc_system="grpc", {SEL}, {Z}'
    b.row(f"gRPC, {side} side")
    b.panel(f"gRPC calls per second by method and status ({side})", [(f'sum by (rpc_service, rpc_method, rpc_grpc_status_code) (rate({fam}_count{{{s}}}[{R}]))', "{{rpc_service}}/{{rpc_method}} {{rpc_grpc_status_code}}")], "reqps")
    b.panel(f"gRPC latency p50 / p99 by method ({side})", [(hq(0.5, fam, s, "rpc_method"), "p50 {{rpc_method}}"), (hq(0.99, fam, s, "rpc_method"), "p99 {{rpc_method}}")], "s",
            exemplars=True, desc=EXEMPLARS)
b.write("http-grpc.json")

# ---------------- network and cost
b = Board("nodetap-network", "nodetap / network and cost", zone_label="src_zone")
NS = f'{SEL}, src_zone=~"$zone"'
b.row("Bytes by zone pair")
b.panel("IP bytes per second by zone pair and direction", [(f'sum by (src_zone, dst_zone, direction) (rate(nodetap_network_bytes_total{{{NS}}}[{R}]))', "{{src_zone}} -> {{dst_zone}} {{direction}}")], "Bps")
b.panel("Cross-zone share of IP bytes", [(f'sum(nodetap:network_cross_zone_bytes:rate5m{{{NS}}}) / sum(rate(nodetap_network_bytes_total{{{NS}}}[5m]))', "cross-zone share")], "percentunit",
        desc="Inter-zone bytes (both zones known and different; rules.yml) over all bytes counted, 5-minute rates.")
b.row("Cost (rules.yml: nodetap:network_cross_zone_cost_usd_per_hour)")
b.panel("Estimated cross-zone cost per workload, USD per hour", [(f'sum by (k8s_namespace_name, service_name) (nodetap:network_cross_zone_cost_usd_per_hour{{{NS}}})', "{{k8s_namespace_name}}/{{service_name}}")], "currencyUSD")
b.panel("Estimated cross-zone cost, USD per month at the current rate", [(f'sum(nodetap:network_cross_zone_cost_usd_per_hour{{{NS}}}) * 730', "USD / month")], "currencyUSD", kind="stat")
b.row("TCP per workload")
b.panel("TCP bytes per second per workload and direction", [(f'sum by (k8s_namespace_name, service_name, direction) (rate(nodetap_tcp_bytes_total{{{SEL}}}[{R}]))', "{{k8s_namespace_name}}/{{service_name}} {{direction}}")], "Bps")
b.panel("TCP connections opened per second per workload and role", [(f'sum by (k8s_namespace_name, service_name, role) (rate(nodetap_tcp_connections_opened_total{{{SEL}}}[{R}]))', "{{k8s_namespace_name}}/{{service_name}} {{role}}")], "cps")
b.write("network-cost.json")

# ---------------- agent health
b = Board("nodetap-agent", "nodetap / agent health")
b.row("Kernel to agent")
b.panel("Events per second by kind", [(f'sum by (instance, kind) (rate(nodetap_events_total[{R}]))', "{{instance}} {{kind}}")], "ops")
b.panel("Events lost per second by reason", [(f'sum by (instance, reason) (rate(nodetap_events_lost_total[{R}]))', "{{instance}} {{reason}}")], "ops",
        desc="payload_unreadable and call_capped arrived without payload; the others were not delivered.")
b.panel("Ring buffer fill", [('max by (instance) (nodetap_ringbuf_waiting_bytes / nodetap_ringbuf_size_bytes)', "{{instance}}")], "percentunit")
b.panel("Required hooks not attached", [('count by (instance) (nodetap_probe_attached{required="true"} == 0) or count by (instance) (nodetap_probe_attached) * 0', "{{instance}}")], "short")
b.row("Limits")
b.panel("Series dropped per second by family (--max-series)", [(f'sum by (instance, family) (rate(nodetap_series_dropped_total[{R}])) or sum by (instance) (rate(nodetap_events_total[{R}])) * 0', "{{instance}} {{family}}")], "ops")
b.panel("Connections tracked and flow table use", [('sum by (instance) (nodetap_connections_tracked)', "{{instance}} connections"), ('max by (instance) (nodetap_network_flows / nodetap_network_flow_capacity)', "{{instance}} flow table")], "short")
b.panel("Protocol requests lost per second by reason", [(f'sum by (instance, protocol, reason) (rate(nodetap_protocol_requests_lost_total[{R}])) or sum by (instance) (rate(nodetap_events_total[{R}])) * 0', "{{instance}} {{protocol}} {{reason}}")], "ops")
b.panel("Kubernetes watch errors per second", [(f'sum by (instance) (rate(nodetap_kubernetes_watch_errors_total[{R}])) or sum by (instance) (rate(nodetap_events_total[{R}])) * 0', "{{instance}}")], "ops")
b.row("Spans and OTLP export")
ZERO = f'sum by (instance) (rate(nodetap_events_total[{R}])) * 0'
b.panel("Spans exported and dropped per second", [
    (f'sum by (instance) (rate(nodetap_spans_exported_total[{R}]))', "{{instance}} exported"),
    (f'sum by (instance, reason) (rate(nodetap_spans_dropped_total[{R}])) or {ZERO}', "{{instance}} dropped {{reason}}")], "ops",
    desc="Spans the OTLP endpoint accepted, and kept spans never exported by reason (queue_full, export_failed, rejected). No data with spans off.")
b.panel("OTLP export failures per second", [
    (f'sum by (instance) (rate(nodetap_spans_export_failures_total[{R}])) or {ZERO}', "{{instance}} spans"),
    (f'sum by (instance) (rate(nodetap_metrics_export_failures_total[{R}])) or {ZERO}', "{{instance}} metrics")], "ops",
    desc="Failed export attempts, retries included: spans are retried for 30 s, metric pushes until the next one.")
b.row("Agent process")
b.panel("Agent CPU (cores)", [(f'sum by (instance) (rate(process_cpu_seconds_total{{job="nodetap"}}[{R}]))', "{{instance}}")], "short")
b.panel("Agent resident memory", [('sum by (instance) (process_resident_memory_bytes{job="nodetap"})', "{{instance}}")], "bytes")
b.panel("Over the CPU budget (--cpu-budget)", [
    ('max by (instance) (nodetap_capture_degraded)', "{{instance}} degraded"),
    (f'sum by (instance) (rate(nodetap_capture_degraded_connections_total[{R}]))', "{{instance}} connections not parsed/s")], "short",
    desc="1 while the agent is over its CPU budget and new connections are counted, not parsed.", w=24)
b.write("agent-health.json")
