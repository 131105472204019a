#!/usr/bin/env python3
"""A real PostgreSQL client (psycopg 3) doing what applications do, for nodetap's tests.

    pg_client.py setup PORT        creates database "work" and the pg_stat_statements
                                   extension (the server preloads the library)
    pg_client.py work NAME PORT    renames its process to NAME and runs the workload on
                                   one connection to "work"; prints what it executed
    pg_client.py stats NAME PORT   renames its process to NAME and prints what the server
                                   counted for database "work"

The workload, in autocommit mode on one connection:
- CREATE TABLE x2, INSERT ... SELECT of 1,000 rows;
- pipeline mode (conn.pipeline()): 500 parameterised SELECTs;
- prepared statements (prepare=True): 200 executions;
- a transaction: BEGIN, 10 INSERTs, 1 UPDATE, COMMIT;
- COPY ... FROM STDIN of 5,000 rows (copy.write_row) and COPY ... TO STDOUT;
- an error: a duplicate key (SQLSTATE 23505, class 23);
- 10 plain SELECTs after all that, and SELECT pg_stat_force_next_flush().

`work` prints {"stage": LABEL, "ops": {"SELECT": {"": 500}}} after each stage, with
the stage's statements by verb and SQLSTATE class, and waits for a line on stdin; at the
end {"done": true, "ops": {...all...}, "copy_rows": {"in": 5000, "out": 1010}}.
`stats` prints {"calls": {"SELECT": 711, ...}, "rows": {"COPY": 6010, ...},
"xact_rollback": 1, "ops": {...}}: pg_stat_statements calls and rows summed by the
statement's first word (failed statements are not there), the database's rolled-back
transactions, and the statements `stats` itself executed.
"""

import ctypes
import json
import sys
import time

import psycopg
from psycopg import errors

PR_SET_NAME = 15


def set_process_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def conninfo(port, db):
    return f"host=127.0.0.1 port={port} user=postgres dbname={db}"


class Ops:
    def __init__(self):
        self.ops = {}
        self.stage_ops = {}

    def add(self, verb, error="", n=1):
        for ops in (self.ops, self.stage_ops):
            ops.setdefault(verb, {}).setdefault(error, 0)
            ops[verb][error] += n

    def stage(self, label):
        """Reports the stage's statements and waits for a line on stdin."""
        print(json.dumps({"stage": label, "ops": self.stage_ops}), flush=True)
        self.stage_ops = {}
        sys.stdin.readline()


def setup(port):
    with psycopg.connect(conninfo(port, "postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE work")
        conn.execute("CREATE EXTENSION pg_stat_statements")


def work(port):
    ops = Ops()
    with psycopg.connect(conninfo(port, "work"), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE copied (id int, v text)")
        ops.add("CREATE", n=2)
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
        )
        ops.add("INSERT")
        ops.stage("CREATE TABLE and INSERT ... SELECT")

        # Pipeline mode: 500 parameterised SELECTs, results fetched at the end.
        cursors = []
        with conn.pipeline():
            for i in range(500):
                cur = conn.cursor()
                cur.execute("SELECT v FROM items WHERE id = %s", (i % 1000 + 1,))
                cursors.append(cur)
        assert all(c.fetchone() is not None for c in cursors)
        ops.add("SELECT", n=500)
        ops.stage("pipeline mode, 500 SELECTs")

        # Prepared statements.
        cur = conn.cursor()
        for i in range(200):
            cur.execute(
                "SELECT id, v FROM items WHERE id = %s AND v IS NOT NULL",
                (i + 1,),
                prepare=True,
            )
            assert cur.fetchone()[0] == i + 1
        ops.add("SELECT", n=200)
        ops.stage("prepared statements, 200 SELECTs")

        # A transaction.
        with conn.transaction():
            for i in range(10):
                conn.execute(
                    "INSERT INTO items (id, v) VALUES (%s, %s)", (2000 + i, "tx")
                )
            conn.execute("UPDATE items SET v = 'changed' WHERE id <= 10")
        ops.add("BEGIN")
        ops.add("INSERT", n=10)
        ops.add("UPDATE")
        ops.add("COMMIT")
        ops.stage("transaction")

        # COPY in and out.
        with cur.copy("COPY copied (id, v) FROM STDIN") as copy:
            for i in range(5000):
                copy.write_row((i, f"copied row {i} " + "x" * (i % 100)))
        ops.add("COPY")
        ops.stage("COPY FROM STDIN, 5000 rows")
        out_rows = 0
        with cur.copy("COPY items TO STDOUT") as copy:
            for _ in copy.rows():
                out_rows += 1
        assert out_rows == 1010, out_rows
        ops.add("COPY")
        ops.stage("COPY TO STDOUT, 1010 rows")

        # An integrity error.
        try:
            conn.execute("INSERT INTO items (id, v) VALUES (%s, %s)", (1, "dup"))
            raise AssertionError("duplicate insert succeeded")
        except errors.UniqueViolation:
            ops.add("INSERT", "23")
        ops.stage("unique violation")

        # The same connection after all that.
        for i in range(10):
            assert conn.execute("SELECT count(*) FROM items WHERE id > %s", (i,)).fetchone()
        conn.execute("SELECT pg_stat_force_next_flush()")
        ops.add("SELECT", n=11)
        ops.stage("SELECTs after all that")
    return {"done": True, "ops": ops.ops, "copy_rows": {"in": 5000, "out": out_rows}}


def stats(port):
    ops = Ops()
    with psycopg.connect(conninfo(port, "postgres"), autocommit=True) as conn:
        calls, rows = {}, {}
        for query, n, r in conn.execute(
            "SELECT s.query, s.calls, s.rows FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'work'"
        ):
            verb = query.split(None, 1)[0].upper()
            calls[verb] = calls.get(verb, 0) + n
            rows[verb] = rows.get(verb, 0) + r
        ops.add("SELECT")
        # The work connection forced its statistics out when it ended its last
        # statement; give the flush a moment.
        rollback = 0
        for _ in range(50):
            (rollback,) = conn.execute(
                "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'work'"
            ).fetchone()
            ops.add("SELECT")
            if rollback:
                break
            time.sleep(0.1)
    return {"calls": calls, "rows": rows, "xact_rollback": rollback, "ops": ops.ops}


def main():
    mode = sys.argv[1]
    if mode == "setup":
        setup(int(sys.argv[2]))
        return
    set_process_name(sys.argv[2])
    port = int(sys.argv[3])
    report = work(port) if mode == "work" else stats(port)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
