#!/usr/bin/env python3
"""Plain HTTP/2 (h2c, prior knowledge) requests from httpx, for nodetap's spans test.

    h2_client.py NAME PORT RUN TRACED UNTRACED

Renames its process to NAME, opens one h2c connection to 127.0.0.1:PORT and sends, one
after the other on it, TRACED GETs of /api/orders?page=2 carrying a W3C traceparent
(`00-{RUN}{i:08x}-{0x00f0000000000000 + i:016x}-01` for request i, as the test builds
them), then UNTRACED GETs of /api/orders?page=3 without one.

Prints one JSON line: {"statuses": [...], "http_versions": [...], "local_port": n}.
"""

import ctypes
import json
import sys

import httpx

PR_SET_NAME = 15


def main():
    name, port, run, traced, untraced = sys.argv[1:6]
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
    statuses, versions, local_ports = [], [], set()
    with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{port}") as client:
        requests = [(i, True) for i in range(int(traced))] + [(i, False) for i in range(int(untraced))]
        for i, with_header in requests:
            if with_header:
                header = f"00-{run}{i:08x}-{0x00F0000000000000 + i:016x}-01"
                response = client.get("/api/orders?page=2", headers={"traceparent": header})
            else:
                response = client.get("/api/orders?page=3")
            statuses.append(response.status_code)
            versions.append(response.http_version)
            stream = response.extensions["network_stream"]
            local_ports.add(stream.get_extra_info("client_addr")[1])
    assert len(local_ports) == 1, f"requests used {len(local_ports)} connections"
    print(json.dumps({"statuses": statuses, "http_versions": versions, "local_port": local_ports.pop()}))


if __name__ == "__main__":
    main()
