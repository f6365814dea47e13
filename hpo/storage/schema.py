"""Is a database an Optuna store? Asked before Optuna opens it: Optuna's RDBStorage creates its
tables in whatever database it is handed (and SQLite creates a missing file), so a reader that
opened a wrong URL would write, and a writer would mix its tables into another program's database."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hpo.errors import HpoError, reason
from hpo.storage import faults

OPTUNA_TABLES = {"studies", "trials", "version_info"}  # present in every Optuna RDB store
RDB_BACKENDS = ("sqlite", "postgresql", "mysql")


def parse(url: str):
    """SQLAlchemy's URL, or None for what is not one (a journal file path); a malformed one is one line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    except ValueError as e:  # a non-numeric port: make_url's int()
        raise HpoError(f"malformed storage URL {redact(url)}: the port must be a number ({reason(e)})") from None
    return parsed if parsed.get_backend_name() in RDB_BACKENDS else None


def sqlite_file(parsed) -> Path | None:
    """The file a SQLite URL names, with or without options (``?timeout=5``, ``?mode=ro&uri=true``)."""
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return None
    if database.startswith("file:"):  # uri=true: SQLite's own URI syntax
        database = unquote(urlsplit(database).path)
    return Path(database)


def tables(url: str, verb: str = "read", engine_kwargs: dict | None = None) -> set[str] | None:
    """The tables of the database a URL names; None where it does not exist (a missing SQLite file).
    Never creates anything: SQLite is opened read-only, PostgreSQL only inspected."""
    parsed = parse(url)
    if parsed is None:
        return set()
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(parsed)
        if path is None or not path.exists():
            return None
        if path.is_file() and path.stat().st_size == 0:
            return set()
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
            ) as conn:
                return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as e:
            raise HpoError(f"cannot read the store {path}: {reason(e)} (is it a SQLite database?)") from None
    return _server_tables(url, verb, engine_kwargs or {})


def _server_tables(url: str, verb: str, engine_kwargs: dict) -> set[str]:
    """``engine_kwargs``: the store's own (hpo.storage.store), so that this first connection waits out a
    server that is away, and tells a refusal, exactly as the store's connections do."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, **engine_kwargs)
        try:
            with engine.connect() as conn:
                return set(sqlalchemy.inspect(conn).get_table_names())
        finally:
            engine.dispose()
    except ImportError as e:
        raise HpoError(f"no database driver for {redact(url)}: {reason(e)}") from None
    except sqlalchemy.exc.SQLAlchemyError as e:  # a cut at its first statement is waited out by the caller
        faults.judge(e, f"cannot {verb} the store {redact(url)}")


def check(url: str, *, create: bool, engine_kwargs: dict | None = None) -> bool:
    """Refuse a database that is not an Optuna store: readers (``create=False``) also refuse a
    missing or empty one, which Optuna would make into a store. Returns True where a writer will
    create the store (no database, or an empty one)."""
    found = tables(url, "open" if create else "read", engine_kwargs)
    if parse(url) is None:
        return False  # not an RDB URL: the caller's own checks apply
    where = redact(url)
    if not found:
        if not create:
            at = sqlite_file(parse(url)) if found is None else f"{where} (an empty database)"
            raise HpoError(f"no store at {at}: run `python -m hpo.run --study NAME` first, or pass --storage")
        return True
    if not OPTUNA_TABLES <= found:
        shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise HpoError(
            f"{where} is not an Optuna store: it holds other tables ({shown}); "
            f"pass --storage with a new file or database"
        )
    return False


def redact(url: str) -> str:
    """A URL fit to print: no password (hpo.storage.store, which imports this module, hands it on)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable, yet it may hold a password: mask what sits between user: and @
        return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
