#!/usr/bin/env python3
"""A small HTTP/1.1 proxy for nodetap's thread-linking tests (Python stdlib only).

    http_proxy.py MODE PORT BACKEND_PORT TRUTH_FILE

Serves 127.0.0.1:PORT; a `GET /r/<n>` becomes `GET /api/up/<n>` to 127.0.0.1:BACKEND_PORT
(nginx), over one keep-alive upstream connection per downstream connection, and its
status and body go back to the caller. MODE:

    loop      one thread, asyncio: every connection on the same thread (an event loop,
              like nginx: under concurrency one thread has many requests open)
    threads   a thread per connection (ThreadingHTTPServer): each thread has at most one
              request open

The truth: one JSON line per request to TRUTH_FILE, written before the response is
sent: {"in": path, "out": upstream path, "thread": the native id of the thread that
served it}. The process calls itself `http-proxy`.
"""

import asyncio
import ctypes
import http.client
import http.server
import json
import sys
import threading

PR_SET_NAME = 15
lock = threading.Lock()


def set_process_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def upstream_path(path):
    assert path.startswith("/r/"), path
    return "/api/up/" + path[len("/r/"):]


def note(truth, path_in, path_out):
    line = json.dumps({"in": path_in, "out": path_out, "thread": threading.get_native_id()})
    with lock:
        truth.write(line + "\n")
        truth.flush()


def run_threads(port, backend, truth):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if not hasattr(self, "upstream"):
                self.upstream = http.client.HTTPConnection("127.0.0.1", backend)
            out = upstream_path(self.path)
            self.upstream.request("GET", out)
            response = self.upstream.getresponse()
            body = response.read()
            note(truth, self.path, out)
            self.send_response(response.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever()


async def serve_loop_connection(reader, writer, backend, truth):
    up_reader, up_writer = None, None
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            assert method == "GET", method
            out = upstream_path(path)
            if up_writer is None:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
            up_writer.write(f"GET {out} HTTP/1.1\r\nHost: backend\r\n\r\n".encode())
            await up_writer.drain()
            response_head = await up_reader.readuntil(b"\r\n\r\n")
            status = int(response_head.split(b" ", 2)[1])
            length = 0
            for line in response_head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await up_reader.readexactly(length)
            note(truth, path, out)
            writer.write(
                f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        if up_writer is not None:
            up_writer.close()


async def run_loop(port, backend, truth):
    server = await asyncio.start_server(
        lambda r, w: serve_loop_connection(r, w, backend, truth), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


def main():
    mode, port, backend, truth_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    set_process_name("http-proxy")
    truth = open(truth_path, "a")
    if mode == "loop":
        asyncio.run(run_loop(port, backend, truth))
    elif mode == "threads":
        run_threads(port, backend, truth)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
