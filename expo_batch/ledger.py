"""The run ledger: an SQLite record of every unit of work, keyed by a fingerprint of its inputs.

A unit (a pair's ``resolve``, ``fetch``, ``preflight``, ``generate@0.30``, ``score@0.30``,
``select``, ``materialize``, ``card``) is *done* when its recorded fingerprint equals the one the
pipeline computes now and its artifact is still on disk. Change an input and the fingerprint
changes, so exactly the units that depend on it run again. Every transition is also appended to
an ``events`` table, so tests (and curious users) can count what was computed and when.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    pair TEXT NOT NULL,
    unit TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    artifact TEXT,
    info TEXT,
    error TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (pair, unit)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    pair TEXT NOT NULL,
    unit TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
"""

# The order of a pair's stages, for status displays.
STAGES = ("resolve", "check", "fetch", "preflight", "sweep", "select", "materialize", "card")


def fingerprint(**parts: Any) -> str:
    """A short stable hash of everything that determines an artifact (canonical JSON, sha256)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    pair: str
    unit: str
    fingerprint: str
    state: str
    artifact: str | None
    info: dict[str, Any]
    error: str | None
    updated: float

    @property
    def stage(self) -> str:
        """'generate@0.30' and 'score@0.30' belong to the 'sweep' stage, 'fetch:sft' to 'fetch'."""
        head = self.unit.split("@", 1)[0].split(":", 1)[0]
        return "sweep" if head in ("generate", "score", "candidate") else head


class Ledger:
    """The ledger of one run folder. Each write is its own transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- writes

    def _event(self, pair: str, unit: str, fp: str, event: str, detail: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO events (time, pair, unit, fingerprint, event, detail) VALUES (?,?,?,?,?,?)",
            (time.time(), pair, unit, fp, event, detail),
        )

    def _set(self, pair: str, unit: str, fp: str, state: str, **cols: Any) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO units (pair, unit, fingerprint, state, artifact, info, error, updated) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(pair, unit) DO UPDATE SET "
                "fingerprint=excluded.fingerprint, state=excluded.state, artifact=excluded.artifact,"
                " info=excluded.info, error=excluded.error, updated=excluded.updated",
                (
                    pair,
                    unit,
                    fp,
                    state,
                    cols.get("artifact"),
                    json.dumps(cols.get("info") or {}, default=str),
                    cols.get("error"),
                    time.time(),
                ),
            )
            self._event(pair, unit, fp, state if state != "running" else "start", cols.get("error"))

    def start(self, pair: str, unit: str, fp: str) -> None:
        self._set(pair, unit, fp, "running")

    def done(
        self,
        pair: str,
        unit: str,
        fp: str,
        *,
        artifact: str | Path | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self._set(pair, unit, fp, "done", artifact=str(artifact) if artifact else None, info=info)

    def failed(self, pair: str, unit: str, fp: str, error: str) -> None:
        self._set(pair, unit, fp, "failed", error=error)

    def progress(self, pair: str, unit: str, fp: str, detail: str) -> None:
        """Record a finished chunk of a unit (e.g. a batch of generations) as an event."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._event(pair, unit, fp, "chunk", detail)

    def skipped(self, pair: str, unit: str, fp: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._event(pair, unit, fp, "skip")

    def forget(self, pair: str) -> None:
        """Drop a pair's units (``run --fresh``); its events stay as history."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM units WHERE pair=?", (pair,))
            self._event(pair, "*", "-", "forget")

    # ----------------------------------------------------------------------------------- reads

    def get(self, pair: str, unit: str) -> Unit | None:
        row = self._db.execute(
            "SELECT pair, unit, fingerprint, state, artifact, info, error, updated FROM units "
            "WHERE pair=? AND unit=?",
            (pair, unit),
        ).fetchone()
        return _unit(row) if row else None

    def is_done(self, pair: str, unit: str, fp: str) -> bool:
        """Done with this very fingerprint, and (if it names one) its artifact still exists."""
        u = self.get(pair, unit)
        if u is None or u.state != "done" or u.fingerprint != fp:
            return False
        return u.artifact is None or Path(u.artifact).exists()

    def units(self, pair: str | None = None) -> list[Unit]:
        q = "SELECT pair, unit, fingerprint, state, artifact, info, error, updated FROM units"
        args: tuple[Any, ...] = ()
        if pair is not None:
            q += " WHERE pair=?"
            args = (pair,)
        return [_unit(r) for r in self._db.execute(q + " ORDER BY updated, rowid", args)]

    def events(self, pair: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT time, pair, unit, fingerprint, event, detail FROM events WHERE 1=1"
        args: list[Any] = []
        if pair is not None:
            q += " AND pair=?"
            args.append(pair)
        if event is not None:
            q += " AND event=?"
            args.append(event)
        cols = ("time", "pair", "unit", "fingerprint", "event", "detail")
        return [dict(zip(cols, r, strict=True)) for r in self._db.execute(q + " ORDER BY id", args)]

    def pair_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT pair FROM units ORDER BY pair")]


def _unit(row: tuple[Any, ...]) -> Unit:
    pair, unit, fp, state, artifact, info, error, updated = row
    return Unit(pair, unit, fp, state, artifact, json.loads(info or "{}"), error, updated)


def open_ledger_readonly(path: Path) -> Ledger | None:
    """The ledger of a run folder, or None if the run has none yet."""
    return Ledger(path) if Path(path).exists() else None
