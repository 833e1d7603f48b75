#!/usr/bin/env python3
"""Records PostgreSQL protocol exchanges as trace files for proxy/src/units.rs's tests.

A TCP relay between a client (psql, pgbench, raw.py...) and a PostgreSQL server: it passes every byte
on unchanged and writes, from the first ReadyForQuery on (the login is left out), one line per message
in arrival order:

    C Q <query text>                    Query (newlines as \\n)
    C P <name or -> <statement text>    Parse
    C B <portal or -> <statement or ->  Bind
    C <tag>                             any other client message (D, E, S, H, C, d, c, f, F, X)
    S Z <I|T|E>                         ReadyForQuery and its transaction status
    S E <SQLSTATE> <severity>           ErrorResponse
    S <tag>                             any other server message

A run of identical lines is written once with ` x<count>`. Usage:

    record.py LISTEN_PORT SERVER_PORT OUT_FILE [CONNECTIONS]

It serves CONNECTIONS client connections (1 by default; pgbench opens 2) one after the other and
writes the last one's messages.
"""
import socket
import struct
import sys
import threading

lock = threading.Lock()




def cstr(body, at):
    end = body.index(b"\0", at)
    return body[at:end].decode(), end + 1


def esc(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def describe(side, tag, body):
    t = chr(tag)
    if side == "C" and t == "Q":
        return "C Q " + esc(cstr(body, 0)[0])
    if side == "C" and t == "P":
        name, at = cstr(body, 0)
        query, _ = cstr(body, at)
        return "C P %s %s" % (name or "-", esc(query))
    if side == "C" and t == "B":
        portal, at = cstr(body, 0)
        stmt, _ = cstr(body, at)
        return "C B %s %s" % (portal or "-", stmt or "-")
    if side == "S" and t == "Z":
        return "S Z " + chr(body[0])
    if side == "S" and t == "E":
        fields = {}
        at = 0
        while body[at] != 0:
            code = chr(body[at])
            value, at = cstr(body, at + 1)
            fields[code] = value
        return "S E %s %s" % (fields.get("C"), fields.get("V", fields.get("S")))
    return "%s %s" % (side, t)


class Stream:
    def __init__(self, side, tagged, lines):
        self.side, self.tagged, self.buf, self.lines = side, tagged, b"", lines
        self.started = side == "C"

    def feed(self, data):
        self.buf += data
        while True:
            if not self.tagged:
                # The client's untagged startup packet.
                if len(self.buf) < 4:
                    return
                (n,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) < n:
                    return
                self.buf = self.buf[n:]
                self.tagged = True
                continue
            if len(self.buf) < 5:
                return
            tag = self.buf[0]
            (n,) = struct.unpack("!I", self.buf[1:5])
            if len(self.buf) < 1 + n:
                return
            body, self.buf = self.buf[5 : 1 + n], self.buf[1 + n :]
            if self.side == "S" and not self.started:
                self.started = tag == ord("Z")
                continue
            if self.side == "C" and chr(tag) == "p":
                continue
            with lock:
                self.lines.append(describe(self.side, tag, body))


def pump(src, dst, stream):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            stream.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    listen_port, server_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(connections)
    threads = []
    for _ in range(connections):
        lines = []
        client, _ = ls.accept()
        server = socket.create_connection(("127.0.0.1", server_port))
        a = threading.Thread(target=pump, args=(client, server, Stream("C", False, lines)))
        b = threading.Thread(target=pump, args=(server, client, Stream("S", True, lines)))
        a.start(), b.start()
        threads += [a, b]
    for t in threads:
        t.join()
    out_lines = []
    for line in lines:
        if out_lines and out_lines[-1][0] == line:
            out_lines[-1][1] += 1
        else:
            out_lines.append([line, 1])
    with open(out, "w") as f:
        for line, n in out_lines:
            f.write(line + (" x%d" % n if n > 1 else "") + "\n")


if __name__ == "__main__":
    main()
