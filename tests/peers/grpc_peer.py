#!/usr/bin/env python3
"""A real gRPC server and client (Python grpcio) for nodetap's integration tests.

    grpc_peer.py server PORT            serves nodetap.test.Echo on 127.0.0.1:PORT
    grpc_peer.py client PORT PLAN...    makes the calls in PLAN, prints what it did (JSON)

The service (generic handlers, messages are raw bytes, no generated code):
    Echo   (unary)          returns the request; a request starting with "notfound"
                            fails NOT_FOUND (5), one starting with "invalid" fails
                            INVALID_ARGUMENT (3)
    Stream (server stream)  sends as many messages as the request's decimal number

PLAN items: ok:N  notfound:N  invalid:N  stream:N  traced:N  (N calls each, in order).
A traced call is an ok call with a W3C traceparent in its metadata (random ids); the
client's output lists them under "traceparents", in call order.
Each side renames its process (grpc-server / grpc-client) so the agent reports it under
a name of its own.
"""

import concurrent.futures
import ctypes
import json
import os
import sys

import grpc

SERVICE = "nodetap.test.Echo"
PR_SET_NAME = 15


def set_process_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def serve(port):
    set_process_name("grpc-server")

    def echo(request, context):
        if request.startswith(b"notfound"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request.startswith(b"invalid"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad argument")
        return request

    def stream(request, context):
        for i in range(int(request or b"5")):
            yield b"message %d" % i

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def client(port, plan):
    set_process_name("grpc-client")
    done = {}
    traceparents = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        stream = channel.unary_stream(f"/{SERVICE}/Stream")
        for item in plan:
            kind, n = item.split(":")
            for _ in range(int(n)):
                if kind == "ok":
                    assert echo(b"hello", timeout=10) == b"hello"
                elif kind in ("notfound", "invalid"):
                    want = grpc.StatusCode.NOT_FOUND if kind == "notfound" else grpc.StatusCode.INVALID_ARGUMENT
                    try:
                        echo(kind.encode(), timeout=10)
                        raise AssertionError(f"{kind} call succeeded")
                    except grpc.RpcError as e:
                        assert e.code() == want, e.code()
                elif kind == "traced":
                    tp = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
                    traceparents.append(tp)
                    assert echo(b"hello", timeout=10, metadata=(("traceparent", tp),)) == b"hello"
                elif kind == "stream":
                    assert len(list(stream(b"5", timeout=10))) == 5
                else:
                    raise SystemExit(f"unknown plan item {item}")
            done[kind] = done.get(kind, 0) + int(n)
    if traceparents:
        done["traceparents"] = traceparents
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), sys.argv[3:])
