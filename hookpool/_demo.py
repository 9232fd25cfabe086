"""The demo behind ``python -m hookpool``: the hooks at work, in under a second.

Each worker opens a per-worker resource in its initializer (a row buffer for a sqlite
database), tasks append to it, and the finalizer writes and commits it as the worker
leaves (here on ``close()`` + ``join()``; also on recycling, ``terminate()`` and the
``with`` exit, where the standard library kills its workers before a hook could run):
no row is lost. Then a lambda runs as a task, and a worker exception arrives with its
frames.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import traceback
from pathlib import Path

import hookpool

_rows: list[tuple[int, int, int]] = []
_database = ""


def open_buffer(database: str) -> None:
    """Initializer: runs once in each worker, before its first task."""
    global _database
    _database = database
    _rows.clear()


def record(x: int) -> int:
    """Task: compute, and buffer a row in this worker's resource."""
    _rows.append((os.getpid(), x, x * x))
    return x * x


def flush_buffer() -> None:
    """Finalizer: runs exactly once as each worker leaves; commits the buffered rows."""
    with sqlite3.connect(_database, timeout=30) as db:
        db.executemany("INSERT INTO squares VALUES (?, ?, ?)", _rows)
    print(f"  finalizer in worker {os.getpid()}: committed {len(_rows)} rows")


def parse(text: str) -> int:
    return int(text)


def main() -> int:
    database = str(Path(tempfile.mkdtemp(prefix="hookpool-demo-")) / "demo.sqlite")
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE squares (pid INTEGER, x INTEGER, square INTEGER)")

    print("1. A per-worker resource: opened by the initializer, flushed by the finalizer")
    pool = hookpool.Pool(2, initializer=open_buffer, initargs=(database,), finalizer=flush_buffer)
    total = sum(pool.map(record, range(1000), chunksize=50))
    pool.close()
    pool.join()
    with sqlite3.connect(database) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM squares").fetchone()
    print(f"  sum of squares = {total}; rows in the database after close()+join(): {rows}")

    with hookpool.Pool(2) as pool:
        print("\n2. A lambda as a task (the standard library cannot pickle it under spawn)")
        offset = 10
        print(f"  {pool.map(lambda x: x + offset, [1, 2, 3])}")

        print("\n3. A worker exception, re-raised in the caller with the worker's frames")
        try:
            pool.apply(parse, ("not a number",))
        except ValueError:
            lines = traceback.format_exc().splitlines()
            print("  " + "\n  ".join(lines[-8:]))
    return 0 if rows == 1000 else 1
