#!/usr/bin/env python3
"""A minimal protocol client for the exchanges psql and pgbench do not make, to record through
record.py: message batches written in one send each, as drivers that pipeline write them.

    raw.py PORT SCENARIO      # scenarios: see SCENARIOS below
"""
import socket
import struct
import sys
import time


def msg(tag, body=b""):
    return tag + struct.pack("!I", len(body) + 4) + body


def z(s):
    return s.encode() + b"\0"


def Q(sql):
    return msg(b"Q", z(sql))


def P(sql, name=""):
    return msg(b"P", z(name) + z(sql) + struct.pack("!H", 0))


def B(stmt="", portal=""):
    return msg(b"B", z(portal) + z(stmt) + struct.pack("!HHH", 0, 0, 0))


def D(kind=b"P", name=""):
    return msg(b"D", kind + z(name))


def E(portal=""):
    return msg(b"E", z(portal) + struct.pack("!I", 0))


S = msg(b"S")
H = msg(b"H")

SCENARIOS = {
    # A Flush and a Sync at an idle point open no unit; then an ordinary query.
    "flush_sync_idle": [[H], [S], [Q("SELECT 1")], [H, S], [Q("SELECT 2")]],
    # An unnamed statement parsed in one unit, bound and run in the next ones (no Parse).
    "unit_without_parse": [
        [P("SELECT 42"), S],
        [B(), D(), E(), S],
        [B(), E(), S],
    ],
    # Units pipelined in one write: reads, then a write, then reads again.
    "pipelined_units": [
        [P("SELECT 1"), B(), D(), E(), S, P("SELECT 2"), B(), D(), E(), S, Q("SELECT 3")],
        [P("SELECT 4"), B(), E(), S, P("INSERT INTO t VALUES (4)"), B(), E(), S, Q("SELECT 5")],
        [Q("SELECT 6"), Q("SET application_name = 'pipelined'"), Q("SELECT 7")],
    ],
}


def main():
    port, scenario = int(sys.argv[1]), sys.argv[2]
    sock = socket.create_connection(("127.0.0.1", port))
    params = z("user") + z("postgres") + z("database") + z("postgres") + b"\0"
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""

    def read_until(readies, quiet):
        nonlocal buf
        sock.settimeout(quiet)
        while readies > 0 or quiet:
            while len(buf) >= 5:
                (n,) = struct.unpack("!I", buf[1:5])
                if len(buf) < 1 + n:
                    break
                if buf[0:1] == b"Z":
                    readies -= 1
                buf = buf[1 + n :]
            if readies <= 0 and not quiet:
                return
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return
            if not data:
                return
            buf += data
        sock.settimeout(None)

    read_until(1, None)
    for batch in SCENARIOS[scenario]:
        sock.sendall(b"".join(batch))
        readies = sum(1 for m in batch if m[0:1] in (b"S", b"Q"))
        if readies:
            read_until(readies, None)
        else:
            read_until(0, 0.5)
    sock.sendall(msg(b"X"))
    time.sleep(0.2)
    sock.close()


if __name__ == "__main__":
    main()
