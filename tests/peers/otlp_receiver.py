#!/usr/bin/env python3
"""A stand-in OTLP trace and metrics receiver for nodetap's integration tests, speaking the real
protocol with the official OpenTelemetry protobuf bindings (PyPI opentelemetry-proto)
and grpcio: no collector can be installed on the test machines.

    otlp_receiver.py http PORT OUT [CERT KEY]   OTLP/HTTP protobuf on 127.0.0.1:PORT/v1/traces
                                                and /v1/metrics
    otlp_receiver.py grpc PORT OUT [CERT KEY]   OTLP/gRPC (TraceService/Export and
                                                MetricsService/Export) on 127.0.0.1:PORT

With CERT and KEY (PEM files) it serves TLS.

    otlp_receiver.py discard PORT OUT           OTLP/HTTP that accepts every export without
                                                decoding or recording it (the spans bench:
                                                a receiver as cheap as can be)

Every span received is appended to OUT as one JSON line (ids in hex, attributes as a
dict, the resource's attributes, and what the request said of itself: its compression
and the value of its x-test-token header), and flushed at once; every metric data point
received is one JSON line in OUT.metrics (name, kind, temporality, attributes, times,
value or count/sum/buckets, the resource). Prints "ready" when it listens.
"""

import concurrent.futures
import ctypes
import gzip
import http.server
import json
import sys
import threading

from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

PR_SET_NAME = 15
lock = threading.Lock()


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def record(out, request, compression, token):
    lines = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(
                    json.dumps(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "status": span.status.code,
                            "flags": span.flags,
                            "attributes": {
                                kv.key: value_of(kv.value) for kv in span.attributes
                            },
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                            "compression": compression,
                            "token": token,
                        }
                    )
                )
    with lock:
        out.write("".join(line + "\n" for line in lines))
        out.flush()


def record_metrics(out, request):
    lines = []
    for resource_metrics in request.resource_metrics:
        resource = {kv.key: value_of(kv.value) for kv in resource_metrics.resource.attributes}
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind)
                for point in data.data_points:
                    line = {
                        "name": metric.name,
                        "unit": metric.unit,
                        "kind": kind,
                        "temporality": getattr(data, "aggregation_temporality", 0),
                        "monotonic": getattr(data, "is_monotonic", False),
                        "attributes": {kv.key: value_of(kv.value) for kv in point.attributes},
                        "start": point.start_time_unix_nano,
                        "time": point.time_unix_nano,
                        "resource": resource,
                        "scope": scope_metrics.scope.name,
                    }
                    if kind == "histogram":
                        line["count"] = point.count
                        line["sum"] = point.sum
                        line["bucket_counts"] = list(point.bucket_counts)
                        line["explicit_bounds"] = list(point.explicit_bounds)
                        line["exemplars"] = [
                            {
                                "trace_id": e.trace_id.hex(),
                                "span_id": e.span_id.hex(),
                                "value": e.as_double,
                                "time": e.time_unix_nano,
                            }
                            for e in point.exemplars
                        ]
                    else:
                        line["value"] = getattr(point, point.WhichOneof("value"))
                    lines.append(json.dumps(line))
    with lock:
        out.write("".join(line + "\n" for line in lines))
        out.flush()


def serve_http(port, out, metrics_out, tls, discard=False):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if discard:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            encoding = self.headers.get("Content-Encoding", "none")
            if encoding == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/metrics" and self.headers["Content-Type"] == "application/x-protobuf":
                request = metrics_service_pb2.ExportMetricsServiceRequest()
                request.ParseFromString(body)
                record_metrics(metrics_out, request)
                reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                return
            if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            record(out, request, encoding, self.headers.get("x-test-token"))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


def serve_grpc(port, out, metrics_out, tls):
    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            metadata = dict(context.invocation_metadata())
            record(
                out,
                request,
                metadata.get("grpc-encoding", "none"),
                metadata.get("x-test-token"),
            )
            return trace_service_pb2.ExportTraceServiceResponse()

    class MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            record_metrics(metrics_out, request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(), server)
    if tls:
        with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tls = sys.argv[4:6] if len(sys.argv) >= 6 else None
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"otlp-receiver", 0, 0, 0)
    out = open(path, "a", encoding="utf-8")
    metrics_out = open(path + ".metrics", "a", encoding="utf-8")
    if mode == "http":
        serve_http(port, out, metrics_out, tls)
    elif mode == "discard":
        serve_http(port, out, metrics_out, tls, discard=True)
    else:
        import grpc

        serve_grpc(port, out, metrics_out, tls)
