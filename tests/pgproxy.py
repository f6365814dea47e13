"""A loopback TCP proxy in front of PostgreSQL that cuts the network on an event, not a clock.

It reads the frontend protocol the clients send (startup, Parse, Bind, Query, Sync), so a test can
say "cut when a worker runs its first INSERT INTO trials", and "cut after that COMMIT reached the
server" (the commit happened, the client never hears so). A cut drops every connection through the
proxy and refuses new ones until ``mend()``. Clients must not use TLS (``sslmode=disable``): the
proxy has to read the messages.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

SSL_REQUEST, GSS_REQUEST = 80877103, 80877104


@dataclass
class Trigger:
    pattern: tuple[bytes, ...]  # statements that must run, in order, on one connection
    nth: int = 1  # the nth connection to complete the sequence fires it
    after: bool = False  # cut once the last statement and its Sync reached the server, not before
    apps: object = None  # application_name -> bool: which connections count (None: all)
    seen: int = 0


@dataclass
class Conn:
    client: socket.socket
    server: socket.socket
    app: str = ""
    statements: dict[bytes, bytes] = field(default_factory=dict)  # prepared name -> SQL
    progress: int = 0  # how far along the trigger's sequence this connection is
    dead: bool = False


class Proxy:
    def __init__(self, target=("127.0.0.1", 5432)):
        self.target, self.up, self.lock = target, True, threading.Lock()
        self.conns: list[Conn] = []
        self.trigger: Trigger | None = None
        self.queue: list[Trigger] = []  # the triggers after this one
        self.fired = threading.Event()  # set at each cut
        self.on_fire = lambda: None  # called at each cut; what it returns goes to ``fires``
        self.fires: list = []
        self.refuse = None  # application_name -> bool: connections refused even while up
        self.log: list[tuple[str, bytes]] | None = None  # (app, SQL) of every statement run, when a list
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def url(self, database: str = "test") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable&gssencmode=disable"

    # ------------------------------------------------ what a test calls

    def cut_on(self, *pattern: bytes, nth: int = 1, after: bool = False, apps=None) -> None:
        """Cut when a connection runs statements containing ``pattern`` (in order) for the nth time."""
        self.cuts_on([Trigger(pattern, nth, after, apps)])

    def cuts_on(self, triggers: list[Trigger]) -> None:
        """Several cuts, one after the other: each trigger is armed when the one before fires (so
        it counts only statements run after that cut)."""
        self.fired.clear()
        with self.lock:
            self.trigger, self.queue = triggers[0], list(triggers[1:])
            for c in self.conns:
                c.progress = 0

    def cut(self) -> None:
        """The server goes: every connection dropped, new ones refused (the port is closed, as a
        stopped server's is) until ``mend()``."""
        with self.lock:
            self.up = False
            conns, self.conns = self.conns, []
            self.trigger = self.queue.pop(0) if self.queue else None
            self.fires.append(self.on_fire())
            if self.listener is not None:
                try:  # wakes the accept() under way; a bare close() would leave the port listening
                    self.listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
        for c in conns:
            _close(c)
        self.fired.set()

    def mend(self) -> None:
        with self.lock:
            if self.listener is None:
                self.listener = socket.create_server(("127.0.0.1", self.port))
                threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
            self.up = True

    # ------------------------------------------------ plumbing

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            conn = Conn(client, server)
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._from_client, args=(conn,), daemon=True).start()
            threading.Thread(target=self._from_server, args=(conn,), daemon=True).start()

    def _from_server(self, c: Conn):
        try:
            while (data := c.server.recv(65536)) and not c.dead:
                c.client.sendall(data)
        except OSError:
            pass
        _close(c)

    def _from_client(self, c: Conn):
        buf, started = b"", False
        try:
            while data := c.client.recv(65536):
                buf += data
                while True:
                    size = _message_size(buf, started)
                    if size is None or len(buf) < size:
                        break
                    message, buf = buf[:size], buf[size:]
                    if not started:
                        started = self._startup(c, message)
                        if c.dead:
                            return
                        c.server.sendall(message)
                        continue
                    if self._fires_before(c, message):
                        self.cut()
                        return
                    c.server.sendall(message)
                    if c.progress < 0 and message[:1] in (b"S", b"Q"):  # "after": the batch is at the server
                        self._cut_after(c)
                        return
        except OSError:
            pass
        _close(c)

    def _startup(self, c: Conn, message: bytes) -> bool:
        code = struct.unpack("!I", message[4:8])[0]
        if code in (SSL_REQUEST, GSS_REQUEST):
            return False  # the server answers "no" and the real startup follows
        fields = message[8:].split(b"\0")
        params = dict(zip(fields[::2], fields[1::2], strict=True))  # name, value, ..., NUL: the last pair empty
        c.app = params.get(b"application_name", b"").decode()
        if (self.refuse and self.refuse(c.app)) or not self.up:
            c.dead = True
            _close(c)
        return True

    def _fires_before(self, c: Conn, message: bytes) -> bool:
        """Whether this message is where the cut goes (before it). An "after" trigger marks the
        connection instead (progress -1) and the cut follows the batch's Sync."""
        sql = _sql(c, message)
        if sql is None:
            return False
        if self.log is not None:
            self.log.append((c.app, sql))
        with self.lock:
            t = self.trigger
            if t is None or c.progress < 0 or t.seen >= t.nth or (t.apps is not None and not t.apps(c.app)):
                return False
            if t.pattern[c.progress] not in sql:
                return False
            c.progress += 1
            if c.progress < len(t.pattern):
                return False
            c.progress = 0
            t.seen += 1
            if t.seen < t.nth:
                return False
            if not t.after:
                return True
            c.progress = -1
            return False

    def _cut_after(self, c: Conn):
        """The last statement reached the server: let it run (the client never sees its answer),
        then cut. FIN, not RST, so that the server reads what it was sent before the end."""
        c.dead = True  # the server's answer is not passed on
        with self.lock:
            self.up = False
        try:
            c.server.shutdown(socket.SHUT_WR)
            c.server.settimeout(5)
            while c.server.recv(65536):
                pass
        except OSError:
            pass
        self.cut()


def _message_size(buf: bytes, started: bool) -> int | None:
    if not started:
        return struct.unpack("!I", buf[:4])[0] if len(buf) >= 4 else None
    return 1 + struct.unpack("!I", buf[1:5])[0] if len(buf) >= 5 else None


def _sql(c: Conn, message: bytes) -> bytes | None:
    """The SQL a message executes: a simple Query's text, or a Bind's prepared statement (its
    Parse came before, possibly much earlier: psycopg prepares statements it runs often)."""
    kind, body = message[:1], message[5:]
    if kind == b"Q":
        return body.rstrip(b"\0")
    if kind == b"P":
        name, rest = body.split(b"\0", 1)
        c.statements[name] = rest.split(b"\0", 1)[0]
        return None
    if kind == b"B":
        portal, rest = body.split(b"\0", 1)
        return c.statements.get(rest.split(b"\0", 1)[0], b"")
    return None


def _close(c: Conn) -> None:
    c.dead = True
    for s in (c.client, c.server):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass
