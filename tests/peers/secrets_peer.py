#!/usr/bin/env python3
"""Puts credentials on the wire with real client libraries, for nodetap's secrets test.

    secrets_peer.py NAME REDIS_PORT PG_PORT HTTP1_PORT H2C_PORT

The secrets come from the environment (never the command line, which other processes
can read): NODETAP_SECRET_REDIS_PASS, NODETAP_SECRET_REDIS_USER_PASS (for the ACL user
`nodetap_acl`), NODETAP_SECRET_PG_SCRAM, NODETAP_SECRET_PG_MD5, NODETAP_SECRET_PG_PLAIN,
NODETAP_SECRET_BEARER, NODETAP_SECRET_COOKIE, NODETAP_SECRET_PROXY.

Renames its process to NAME, then:
- redis-py: logs in (redis-py 8 sends HELLO ... AUTH) with the default user and with an
  ACL user (RESP3), and sends bare AUTH <password> and AUTH <user> <password>, with
  SET/GET on each connection;
- psycopg 3: as the trusted superuser, creates three roles with passwords (the password
  is in the CREATE ROLE text), then logs in as each: SCRAM-SHA-256 (SASLInitialResponse,
  SASLResponse), md5 (PasswordMessage with the hash) and cleartext `password`
  (PasswordMessage with the password itself), one query each;
- httpx: HTTP/1.1 and h2c requests to nginx's /login (which answers with a Set-Cookie)
  carrying Authorization, Cookie and Proxy-Authorization, twice per connection (HPACK
  then refers to the values through its dynamic table).

Prints one JSON line: {"redis_auth": n, "redis_hello": n, "pg_logins": n, "http1": n, "h2": n}.
"""

import ctypes
import json
import os
import sys

import httpx
import psycopg
import redis

PR_SET_NAME = 15


def main():
    name, redis_port, pg_port, http1_port, h2c_port = sys.argv[1:6]
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
    s = {k[len("NODETAP_SECRET_"):]: v for k, v in os.environ.items() if k.startswith("NODETAP_SECRET_")}
    report = {}

    r = redis.Redis(host="127.0.0.1", port=int(redis_port), password=s["REDIS_PASS"])
    r.set("nodetap-secrets", "v")
    # redis-py 8 logs in with HELLO ... AUTH; applications also send a bare AUTH.
    assert r.execute_command("AUTH", s["REDIS_PASS"])
    assert r.execute_command("AUTH", "nodetap_acl", s["REDIS_USER_PASS"])
    assert r.get("nodetap-secrets") == b"v"
    r.close()
    report["redis_auth"] = 1
    r3 = redis.Redis(
        host="127.0.0.1",
        port=int(redis_port),
        username="nodetap_acl",
        password=s["REDIS_USER_PASS"],
        protocol=3,
    )
    r3.set("nodetap-secrets", "w")
    assert r3.get("nodetap-secrets") == b"w"
    r3.close()
    report["redis_hello"] = 1

    admin = f"host=127.0.0.1 port={pg_port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE nodetap_scram LOGIN PASSWORD '{s['PG_SCRAM']}'")
        conn.execute(f"CREATE ROLE nodetap_plain LOGIN PASSWORD '{s['PG_PLAIN']}'")
        conn.execute("SET password_encryption = 'md5'")
        conn.execute(f"CREATE ROLE nodetap_md5 LOGIN PASSWORD '{s['PG_MD5']}'")
    logins = 0
    for user, secret in [("nodetap_scram", "PG_SCRAM"), ("nodetap_md5", "PG_MD5"), ("nodetap_plain", "PG_PLAIN")]:
        dsn = f"host=127.0.0.1 port={pg_port} user={user} dbname=postgres"
        with psycopg.connect(dsn, password=s[secret], sslmode="disable") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        logins += 1
    report["pg_logins"] = logins

    headers = {
        "Authorization": f"Bearer {s['BEARER']}",
        "Cookie": f"session={s['COOKIE']}",
        "Proxy-Authorization": f"Basic {s['PROXY']}",
    }
    for key, port, kwargs in [
        ("http1", http1_port, {}),
        ("h2", h2c_port, {"http1": False, "http2": True}),
    ]:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", **kwargs) as client:
            n = 0
            for _ in range(2):
                resp = client.get("/login", headers=headers)
                assert resp.status_code == 200, resp.status_code
                assert "set-cookie" in resp.headers, resp.headers
                want = "HTTP/2" if key == "h2" else "HTTP/1.1"
                assert resp.http_version == want, resp.http_version
                n += 1
            report[key] = n
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
