"""Open the study store in optuna-dashboard, with the project's defaults filled in.

    python -m hpo.dashboard [--storage URL] [--artifact-dir DIR] [--host HOST] [--port PORT]

A thin wrapper: optuna-dashboard serves everything (its `wsgi` app, its storage-URL parsing);
this adds the project's store and artifact folder as defaults, binds to loopback unless told
otherwise, and turns bad input into one line instead of a traceback or a silently created store.
The plain `optuna-dashboard sqlite:///storage/hpo.db --artifact-dir models` serves the same.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from hpo.cli import run_main, say
from hpo.errors import HpoError, reason
from hpo.storage import faults, schema
from hpo.storage.store import ARTIFACT_DIR, DEFAULT_STORAGE, redact, sqlite_path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _Server(ThreadingMixIn, WSGIServer):
    """Threaded, as optuna-dashboard's own CLI serves: the page fetches several API routes at once."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hpo.dashboard",
        description="Browse the study store in optuna-dashboard (no authentication: keep it on loopback).",
    )
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        metavar="URL",
        help=f"Optuna storage URL or journal file (default: {DEFAULT_STORAGE})",
    )
    parser.add_argument(
        "--artifact-dir",
        default=str(ARTIFACT_DIR),
        metavar="DIR",
        help=f"artifact store holding the trials' weights (default: {ARTIFACT_DIR})",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        metavar="HOST",
        help=f"address to listen on; anything but loopback lets whoever can reach it "
        f"read and change the studies (default: {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, metavar="PORT", help=f"port to listen on (default: {DEFAULT_PORT})"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"argument --port: {args.port} is not a port number (1-65535)")
    return args


def open_store(url: str):
    """optuna-dashboard's own storage (read as its CLI reads it), after checking it exists.

    Opening a SQLite URL creates the file when it is missing; a dashboard must never do that."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise HpoError(f"no store at {path}: run `python -m hpo.run --study NAME` first")
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError
    from optuna.storages import RDBStorage
    from optuna_dashboard._storage_url import get_storage  # what `optuna-dashboard URL` uses

    try:
        schema.check(url, create=False)  # any query (?timeout=5), an empty file, another program's tables
        if url.startswith(("postgresql", "mysql")):
            # As optuna-dashboard opens it, plus pre_ping: a restarted server leaves dead pooled
            # connections, and without it the next page load after a restart fails.
            storage = RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, skip_compatibility_check=True, skip_table_creation=True
            )
        else:
            storage = get_storage(url)
        storage.get_all_studies()  # fail now, not on the first page load
    except ValueError as e:  # optuna-dashboard could not tell what kind of store the URL names
        raise HpoError(
            f"malformed storage URL {redact(url)!r} ({e}): expected e.g. {DEFAULT_STORAGE}, "
            f"postgresql://USER@HOST/DB or a journal file"
        ) from None
    except ImportError as e:
        raise HpoError(f"no database driver for {redact(url)}: {reason(e)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError, faults.StoreLost) as e:
        if faults.kind(e) in (faults.TRANSIENT, faults.LOST):  # nothing to wait for: a person is at the prompt
            raise HpoError(
                f"the store {redact(url)} is out of reach ({reason(e)}): start it or mend the network, and run again"
            ) from None
        faults.judge(e, f"cannot read the store {redact(url)}")
    return storage


def open_artifacts(folder: str):
    """The artifact store the runs upload weights to, or None where the folder is missing."""
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(folder) if Path(folder).is_dir() else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def listen(app, host: str, port: int):
    """Bind now, so a taken port is one line before anything claims to be serving."""
    server_class = _Server6 if ":" in host else _Server
    try:
        return make_server(host, port, app, server_class=server_class)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise HpoError(f"port {port} on {host} is in use: pick another with --port") from None
        raise HpoError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def page_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # the wildcard is not an address a browser can open
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/dashboard"


def main(argv=None) -> int:
    args = parse_args(argv)
    host, port = args.host, args.port
    storage = open_store(args.storage)

    from optuna_dashboard import wsgi  # after the checks: importing it takes a second

    artifacts = open_artifacts(args.artifact_dir)
    server = listen(wsgi(storage, artifact_store=artifacts), host, port)
    if artifacts is None:
        say(f"no artifact folder at {args.artifact_dir}: running without artifacts (trial weights are not offered)")
    if not is_loopback(host):
        say(
            f"warning: listening on {host}: the dashboard has no authentication, anyone who can "
            f"reach port {port} can read and change the studies"
        )
    say(f"optuna-dashboard for {redact(args.storage)}: open {page_url(host, port)}  (Ctrl-C stops it)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C is how a dashboard is meant to stop
            say("dashboard stopped")
    return 0


if __name__ == "__main__":
    run_main(main)
