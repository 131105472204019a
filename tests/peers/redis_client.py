#!/usr/bin/env python3
"""A real Redis client (redis-py) doing what applications do, for nodetap's tests.

    redis_client.py NAME PORT

Renames its process to NAME (so the agent reports its traffic under a name of its own),
then, on one pooled connection (a blocking pool of one), runs these stages:

- non-transactional pipelines of 10, 100, 1,000 and 10,000 mixed SET/GET/INCR;
- a MULTI/EXEC transaction pipeline;
- HSET of a 10,000-field hash and HGETALL of it; RPUSH of 10,000 elements and LRANGE
  of them;
- errors: WRONGTYPE (LPUSH on a string, HGETALL on a list) and an unknown command;
- plain GET/SET after all that.

Every command redis-py puts on the wire (its own handshake included) and the first word
of every error reply are recorded from inside the connection, so the report is what
went over the socket, not what the script meant to send. After each stage it prints

    {"stage": "pipeline of 1000", "wire": {"SET": {"": 334}, "LPUSH": {"WRONGTYPE": 1}}}

(that stage's commands by name and error) and waits for a line on stdin; at the end

    {"done": true, "wire": {...all stages...}, "connections": 1, "local_ports": [...]}

Redis answers in order on a connection, so the i-th reply belongs to the i-th command.
"""

import ctypes
import json
import sys

import redis
from redis.exceptions import ResponseError

PR_SET_NAME = 15


def set_process_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def word(x):
    if isinstance(x, (bytes, bytearray, memoryview)):
        x = bytes(x).decode()
    return str(x).upper()


class Recorder:
    def __init__(self):
        self.sent = []  # command names, in wire order, across connections
        self.replies = []  # "" or the error's first word, in wire order
        self.local_ports = []
        self.reported = 0

    def wire(self, start=0):
        assert len(self.sent) == len(self.replies), (len(self.sent), len(self.replies))
        wire = {}
        for name, error in zip(self.sent[start:], self.replies[start:]):
            wire.setdefault(name, {}).setdefault(error, 0)
            wire[name][error] += 1
        return wire

    def stage(self, label):
        print(json.dumps({"stage": label, "wire": self.wire(self.reported)}), flush=True)
        self.reported = len(self.sent)
        sys.stdin.readline()


REC = Recorder()


class RecordingPacker:
    """Wraps redis-py's command packer: every packed command is a command on the wire."""

    def __init__(self, inner):
        self.inner = inner

    def pack(self, *args):
        name = word(args[0])
        # The agent names container commands by their container word (CLIENT SETINFO is
        # CLIENT), as do the first words redis-py passes.
        REC.sent.append(name.split(" ")[0])
        return self.inner.pack(*args)


class RecordingConnection(redis.Connection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._command_packer = RecordingPacker(self._command_packer)

    def _connect(self, *args, **kwargs):
        sock = super()._connect(*args, **kwargs)
        REC.local_ports.append(sock.getsockname()[1])
        return sock

    def read_response(self, *args, **kwargs):
        try:
            response = super().read_response(*args, **kwargs)
        except ResponseError as e:
            # redis-py strips the codes it maps to classes (ERR, NOAUTH, ...) from the
            # message and keeps them as status_code; others stay the message's first word.
            REC.replies.append(getattr(e, "status_code", None) or str(e).split(" ")[0])
            raise
        REC.replies.append("")
        return response


def expect_error(prefix, f):
    try:
        f()
    except ResponseError as e:
        assert str(e).startswith(prefix), f"expected {prefix}, got {e}"
        return
    raise AssertionError(f"expected a {prefix} error")


def main():
    name, port = sys.argv[1], int(sys.argv[2])
    set_process_name(name)
    pool = redis.BlockingConnectionPool(
        host="127.0.0.1",
        port=port,
        max_connections=1,
        timeout=30,
        connection_class=RecordingConnection,
    )
    r = redis.Redis(connection_pool=pool)

    # Pipelines of mixed SET/GET/INCR, not transactional: one write of n commands.
    for n in (10, 100, 1000, 10000):
        p = r.pipeline(transaction=False)
        for i in range(n):
            k = i % 3
            if k == 0:
                p.set(f"p{n}:{i}", "v" * (i % 50))
            elif k == 1:
                p.get(f"p{n}:{i - 1}")
            else:
                p.incr(f"counter:{n}")
        results = p.execute()
        assert len(results) == n, (n, len(results))
        REC.stage(f"pipeline of {n}")

    # A transaction: MULTI, queued commands, EXEC in one write.
    p = r.pipeline(transaction=True)
    p.set("tx:a", "1").incr("tx:a").get("tx:a").set("tx:b", "2")
    assert p.execute() == [True, 2, b"2", True]
    REC.stage("MULTI/EXEC transaction")

    # Large aggregate replies.
    r.delete("bighash", "biglist")
    r.hset("bighash", mapping={f"field:{i}": f"value:{i}" for i in range(10000)})
    assert len(r.hgetall("bighash")) == 10000
    REC.stage("HGETALL of 10000 fields")
    r.rpush("biglist", *[f"element:{i}" for i in range(10000)])
    assert len(r.lrange("biglist", 0, -1)) == 10000
    REC.stage("LRANGE of 10000 elements")

    # Errors.
    r.set("astring", "x")
    expect_error("WRONGTYPE", lambda: r.lpush("astring", "y"))
    expect_error("WRONGTYPE", lambda: r.hgetall("biglist"))
    expect_error("unknown command", lambda: r.execute_command("NOSUCHCMD", "a"))
    REC.stage("errors")

    # Plain commands on the same pooled connection after all that.
    for i in range(50):
        r.set(f"after:{i}", str(i))
        assert r.get(f"after:{i}") == str(i).encode()
    REC.stage("GET/SET after all that")
    pool.disconnect()

    print(
        json.dumps(
            {
                "done": True,
                "wire": REC.wire(),
                "connections": len(REC.local_ports),
                "local_ports": REC.local_ports,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
