"""Backup and restore of the CRM database and the recordings directory, while the IVR runs.

    python -m crm_bridge --config sip.conf backup --to /var/lib/hotline/backups/{stamp} [--recordings DIR] [--keep 7]
    python -m crm_bridge --config sip.conf restore --from DIR [--recordings DIR]
    python -m crm_bridge verify-backup DIR

A backup is a directory: the database (`crm.pgdump`, pg_dump's custom format,
or `crm.sqlite3`, a copy made by SQLite's online backup API), the recordings'
files under `recordings/`, and `manifest.json` naming every file with its size
and SHA-256, the schema revision and the row count of every table *as dumped*.
It is written as `DIR.partial` and renamed when complete, so a directory
without that suffix is a whole backup.

Consistency while calls are written: PostgreSQL's dump runs in the snapshot
of a REPEATABLE READ transaction that also counts the rows (`pg_dump
--snapshot`), so the counts are exactly what the dump holds; SQLite's backup
API copies the database in one step under a read transaction, which in WAL
mode never blocks the IVR's writer (nor does the writer disturb the copy).

Restore goes only into an empty database (PostgreSQL: no tables in the
schema; SQLite: no file, or one without tables), checks every SHA-256 first,
compares the restored row counts with the manifest, then migrates the schema
to this version's head (a backup of an older release is brought forward).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL, make_url

from crm_bridge.db import make_engine, migrate

MANIFEST = "manifest.json"
FORMAT = 1
PG_DUMP_FILE = "crm.pgdump"
SQLITE_FILE = "crm.sqlite3"
RECORDINGS = "recordings"
_CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the backup (database) or to the recordings directory
    size: int
    sha256: str


def _sha256(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy src to dst and hash the bytes copied (not a second read that could differ)."""
    h, size = hashlib.sha256(), 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copystat(src, dst)
    return size, h.hexdigest()


def _pg_tool(name: str) -> str:
    """The newest PostgreSQL client tool installed (a dump needs a pg_dump at least as new as the server)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    tool = shutil.which(name)
    if tool is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client (Debian: postgresql-client)")
    return tool


def _pg_env(url: URL) -> dict[str, str]:
    """libpq's environment for url: the password never appears on a command line."""
    env = dict(os.environ)
    host = url.host or url.query.get("host")
    values = {"PGHOST": host, "PGPORT": str(url.port) if url.port else None, "PGUSER": url.username,
              "PGPASSWORD": url.password, "PGDATABASE": url.database}
    env.update({k: str(v) for k, v in values.items() if v})
    return env


def _tables(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())


def _count_rows(conn: Connection, tables: list[str]) -> dict[str, int]:
    return {t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in tables}


def _revision(conn: Connection, tables: list[str]) -> str | None:
    if "alembic_version" not in tables:
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(found) if found is not None else None


def _dump_postgres(url: URL, engine: Engine, dest: Path) -> dict[str, Any]:
    tables = _tables(engine)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            # pg_dump joins this transaction's snapshot: the counts below are what it dumps
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            rows = _count_rows(conn, tables)
            revision = _revision(conn, tables)
            done = subprocess.run(
                [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                 f"--snapshot={snapshot}", f"--file={dest / PG_DUMP_FILE}"],
                env=_pg_env(url), capture_output=True, text=True, timeout=6 * 3600,
            )
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    return {"file": PG_DUMP_FILE, "rows": rows, "revision": revision}


def _dump_sqlite(url: URL, dest: Path) -> dict[str, Any]:
    if not url.database or url.database == ":memory:" or not Path(url.database).exists():
        raise BackupError(f"no SQLite database file at {url.database}")
    src = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest / SQLITE_FILE)
    try:
        # one step (pages=-1): a consistent copy under one read transaction; in WAL mode the
        # IVR's writer goes on meanwhile, and commits after the start are simply not in it
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the backup
        tables = sorted(r[0] for r in dst.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))
        rows = {t: int(dst.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
        revision = dst.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
            if "alembic_version" in tables else None
    finally:
        src.close()
        dst.close()
    return {"file": SQLITE_FILE, "rows": rows, "revision": revision}


def _copy_recordings(source: Path, dest: Path) -> tuple[list[FileEntry], list[str]]:
    """Every regular file below source, copied and hashed; files deleted meanwhile are listed apart."""
    files: list[FileEntry] = []
    vanished: list[str] = []
    for path in sorted(p for p in source.rglob("*") if not p.is_dir()):
        rel = path.relative_to(source).as_posix()
        if path.is_symlink() or not path.is_file():
            continue
        try:
            size, digest = _copy_hashed(path, dest / RECORDINGS / rel)
        except FileNotFoundError:  # retention deleted it between the listing and the copy
            vanished.append(rel)
            continue
        files.append(FileEntry(rel, size, digest))
    return files, vanished


def backup(url: str, to: Path, recordings: Path | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """Back up the CRM at url (and the recordings directory) into the new directory `to`; returns the manifest."""
    now = now or datetime.now(UTC)
    if to.exists():
        raise BackupError(f"{to} exists: a backup goes into a new directory")
    if recordings is not None and not recordings.is_dir():
        raise BackupError(f"recordings directory {recordings} not found")
    partial = to.with_name(to.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o750)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        engine = make_engine(url)
        try:
            database = _dump_postgres(parsed, engine, partial)
        finally:
            engine.dispose()
    elif backend == "sqlite":
        database = _dump_sqlite(parsed, partial)
    else:
        raise BackupError(f"cannot back up a {backend} database (PostgreSQL and SQLite only)")
    size, digest = _sha256(partial / database["file"])
    database.update(size=size, sha256=digest)
    manifest: dict[str, Any] = {"format": FORMAT, "created_at": now.isoformat(), "backend": backend,
                                "database": database}
    if recordings is not None:
        files, vanished = _copy_recordings(recordings, partial)
        manifest["recordings"] = {"files": [_entry(f) for f in files], "vanished": vanished}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    partial.rename(to)
    return manifest


def _entry(entry: FileEntry) -> dict[str, Any]:
    return {"path": entry.path, "size": entry.size, "sha256": entry.sha256}


def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{src} holds no {MANIFEST}: not a backup, or an unfinished one") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src / MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: backup format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def verify(src: Path) -> list[str]:
    """What is wrong with the backup at src (empty: every file is there with its size and SHA-256)."""
    manifest = read_manifest(src)
    problems = []
    db = manifest["database"]
    entries = [(src / db["file"], db["size"], db["sha256"], db["file"])]
    for f in manifest.get("recordings", {}).get("files", []):
        entries.append((src / RECORDINGS / f["path"], f["size"], f["sha256"], f"{RECORDINGS}/{f['path']}"))
    for path, size, digest, name in entries:
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        got_size, got = _sha256(path)
        if (got_size, got) != (size, digest):
            problems.append(f"{name}: SHA-256 {got[:12]}…, {got_size} bytes; the manifest says {digest[:12]}…, {size}")
    return problems


def _require_empty(engine: Engine, url: URL) -> None:
    tables = [t for t in _tables(engine) if t != "sqlite_sequence"]
    if tables:
        where = url.render_as_string(hide_password=True)
        raise BackupError(f"{where} is not empty ({len(tables)} tables, e.g. {tables[0]}): "
                          "restore only into a new, empty database")


def restore(url: str, src: Path, recordings: Path | None = None) -> dict[str, Any]:
    """Restore the backup at src into the empty database at url (and its recordings into `recordings`)."""
    manifest = read_manifest(src)
    problems = verify(src)
    if problems:
        raise BackupError("the backup is damaged, nothing restored:\n  " + "\n  ".join(problems))
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend != manifest["backend"]:
        raise BackupError(f"the backup is of a {manifest['backend']} CRM; restore it into a {manifest['backend']} URL"
                          f" (not {backend})")
    if "recordings" in manifest and manifest["recordings"]["files"] and recordings is None:
        raise BackupError("the backup holds recordings: say where they go with --recordings DIR")
    db = manifest["database"]
    if backend == "sqlite":
        target = Path(parsed.database or "")
        if target.exists():
            engine = make_engine(url)
            try:
                _require_empty(engine, parsed)
            finally:
                engine.dispose()
        target.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(f"file:{src / db['file']}?mode=ro", uri=True)
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)
            if dest.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise BackupError(f"{target}: integrity check failed after the restore")
        finally:
            source.close()
            dest.close()
    else:
        engine = make_engine(url)
        try:
            _require_empty(engine, parsed)
        finally:
            engine.dispose()
        done = subprocess.run(
            [_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
             f"--dbname={parsed.database}", str(src / db["file"])],
            env=_pg_env(parsed), capture_output=True, text=True, timeout=6 * 3600,
        )
        if done.returncode != 0:
            raise BackupError(f"pg_restore failed: {done.stderr.strip()}")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = _count_rows(conn, sorted(db["rows"]))
        if rows != db["rows"]:
            differ = {t: (rows[t], db["rows"][t]) for t in rows if rows[t] != db["rows"][t]}
            raise BackupError(f"restored row counts differ from the backup's (restored, backed up): {differ}")
        migrate(engine)  # a backup of an older release is brought to this version's schema
    finally:
        engine.dispose()
    restored_files = 0
    if recordings is not None:
        for f in manifest.get("recordings", {}).get("files", []):
            restored_files += _restore_file(src / RECORDINGS / f["path"], recordings / f["path"], f["sha256"])
    return {"rows": db["rows"], "recordings": restored_files}


def _restore_file(src: Path, dst: Path, digest: str) -> int:
    """Put one recording back (1), or leave the identical one there (0); never overwrite a different file."""
    if dst.exists():
        if _sha256(dst)[1] == digest:
            return 0
        raise BackupError(f"{dst} exists and differs from the backup's copy: move it away first")
    tmp = dst.with_name(dst.name + ".restoring")
    _, got = _copy_hashed(src, tmp)
    if got != digest:
        tmp.unlink()
        raise BackupError(f"{src}: changed while being restored")
    tmp.rename(dst)
    return 1


def prune(parent: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest complete backups in parent (directories with a manifest); returns them."""
    done = sorted((p for p in parent.iterdir() if (p / MANIFEST).is_file()), key=lambda p: p.stat().st_mtime)
    old = done[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path)
    return old
