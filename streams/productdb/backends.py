"""The thin dialect layer under the product DB: one async transaction API, PostgreSQL and SQLite.

Everything above this module (migrations, inserts, queries) is written once, in SQL both
databases accept, with ``%s`` placeholders. What genuinely differs lives here: the driver, how a
transaction is opened (SQLite must take its write lock up front or concurrent writers deadlock;
PostgreSQL serialises migrations with an advisory lock), the column types for timestamps and
JSON, and which driver errors mean "this data can never be written" rather than "try again".
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psycopg

TxKind = Literal["read", "write", "migrate"]
T = TypeVar("T")

# Any constant works; it only has to be the same in every sink process.
_MIGRATION_LOCK_KEY = 0x7461_6773_7472_6D  # "tagstrm"


class Transaction(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Backend(Protocol):
    types: Mapping[str, str]
    """Dialect column types by role (``timestamp``, ``json``), substituted into migrations."""
    data_errors: tuple[type[Exception], ...]
    """Errors caused by the data itself: retrying the same rows can never succeed."""

    def transaction(self, kind: TxKind) -> AbstractAsyncContextManager[Transaction]:
        """Commits when the block exits normally, rolls back when it raises."""
        ...

    async def close(self) -> None: ...


def open_backend(url: str) -> Backend:
    """``postgresql://…`` / ``postgres://…`` (libpq syntax) or ``sqlite:///relative`` / ``sqlite:////absolute``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url.removeprefix("sqlite:///"))
    raise ValueError(f"unsupported database URL {url!r}: expected postgresql://… or sqlite:///path")


class PostgresBackend:
    types: Mapping[str, str] = {"timestamp": "TIMESTAMPTZ", "json": "JSONB"}
    data_errors: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError)

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        """The open connection, reconnecting after the server or network dropped the last one."""
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        return self._connection

    @asynccontextmanager
    async def transaction(self, kind: TxKind) -> AsyncIterator[Transaction]:
        connection = await self._connect()
        async with connection.transaction(), connection.cursor() as cursor:
            if kind == "migrate":
                await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            yield _PostgresTransaction(cursor)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class _PostgresTransaction:
    def __init__(self, cursor: psycopg.AsyncCursor[tuple[Any, ...]]) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._cursor.execute(sql, params)
        return self._cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._cursor.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        await self._cursor.execute(sql, params)
        return await self._cursor.fetchall()


class SqliteBackend:
    """sqlite3 on one dedicated thread: the connection never moves threads, the loop never blocks."""

    types: Mapping[str, str] = {"timestamp": "TEXT", "json": "TEXT"}
    data_errors: tuple[type[Exception], ...] = (sqlite3.DataError, sqlite3.IntegrityError)

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly below, with the lock we need.
            connection = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")  # readers (the query CLI) never wait for the sink
            connection.execute("PRAGMA foreign_keys=ON")
            self._connection = connection
        return self._connection

    @asynccontextmanager
    async def transaction(self, kind: TxKind) -> AsyncIterator[Transaction]:
        # One connection, so one transaction at a time; the lock queues concurrent callers.
        async with self._lock:
            connection = await self._run(self._connect)
            # IMMEDIATE takes the write lock now: two writers upgrading from read locks deadlock.
            await self._run(lambda: connection.execute("BEGIN" if kind == "read" else "BEGIN IMMEDIATE"))
            try:
                yield _SqliteTransaction(connection, self._run)
                await self._run(lambda: connection.execute("COMMIT"))
            except BaseException:
                with suppress(sqlite3.Error):  # a failed BEGIN or COMMIT may have left nothing to roll back
                    await self._run(lambda: connection.execute("ROLLBACK"))
                raise

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._run(connection.close)
        self._executor.shutdown(wait=True)


class _SqliteTransaction:
    def __init__(self, connection: sqlite3.Connection, run: Callable[[Callable[[], Any]], Any]) -> None:
        self._connection = connection
        self._run = run

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        query, values = _sqlite_sql(sql), _sqlite_params(params)
        cursor: sqlite3.Cursor = await self._run(lambda: self._connection.execute(query, values))
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        query, values = _sqlite_sql(sql), [_sqlite_params(row) for row in rows]
        await self._run(lambda: self._connection.executemany(query, values))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        query, values = _sqlite_sql(sql), _sqlite_params(params)
        rows: list[tuple[Any, ...]] = await self._run(lambda: self._connection.execute(query, values).fetchall())
        return rows


def _sqlite_sql(sql: str) -> str:
    return sql.replace("%s", "?")


def _sqlite_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """Timestamps as fixed-width UTC ISO-8601 text: it sorts chronologically as plain text."""
    return tuple(
        value.astimezone(timezone.utc).isoformat(timespec="microseconds") if isinstance(value, datetime) else value
        for value in params
    )
