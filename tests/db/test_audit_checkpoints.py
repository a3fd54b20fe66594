"""Signed chain checkpoints outside the database: a chain rewritten with recomputed hashes and head is found.

The intruder has the database superuser: triggers off, a row's content changed, every later hash and the head
recomputed with `chain_hash`, so the in-database `verify` passes. The checkpoints (and an issued record's chain
head) are what still tell.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app import db
from app.auth.principal import Principal, Role
from app.records import audit
from app.records import checkpoints as cp
from app.settings import Settings

ALICE = Principal(kind="user", id=7, name="alice", role=Role.SUPERVISOR, display_name="Alice Smith")
CULTURECTL = [sys.executable, "-m", "app.cli"]


@dataclass
class Grown:
    """30 audit rows, checkpoints at seq 10, 20 and 30, a record issued at seq 15."""

    directory: Path
    key: Ed25519PrivateKey
    key_file: Path
    public_file: Path
    record_file: Path
    record_head: dict[str, object]
    rows: list[asyncpg.Record]
    head: asyncpg.Record

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()


@pytest.fixture(scope="module")
async def owner(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The login user: the schema owner, a superuser on the test servers (the intruder)."""
    conn = await db.connect(db_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def app_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def _write(pool: asyncpg.Pool, n: int) -> None:
    async with pool.acquire() as conn:
        for i in range(n):
            async with conn.transaction():
                await audit.record(conn, actor=ALICE, action="culture_run.update", entity_type="culture_run",
                                   entity_id=i, old={"i": i}, new={"i": i + 1, "ratio": i / 3}, reason=f"change {i}")


@pytest.fixture(scope="module")
async def grown(app_pool: asyncpg.Pool, owner: asyncpg.Connection,
                tmp_path_factory: pytest.TempPathFactory) -> Grown:
    base = tmp_path_factory.mktemp("checkpoints")
    key_file = base / "keys" / cp.KEY_FILE
    key = cp.load_or_create_signing_key(key_file)
    directory = base / "checkpoints"
    record_head: dict[str, object] = {}
    async with app_pool.acquire() as conn:
        for n in (10, 5, 5, 10):  # seq 10, 15 (the record), 20, 30
            await _write(app_pool, n)
            head = await cp.record_chain_head(conn)
            if head["seq"] == 15:
                record_head = head
            else:
                await cp.write_checkpoint(conn, directory, key, "interval")
    record_file = base / "batch-record.json"
    record_file.write_text(json.dumps({cp.RECORD_CHAIN_KEY: record_head, "run": {"code": "R-0001"}}))
    rows = list(await owner.fetch(f"SELECT {audit.AUDIT_COLUMNS} FROM audit_log ORDER BY seq"))
    head_row = await owner.fetchrow("SELECT seq, hash FROM audit_head")
    assert head_row is not None and head_row["seq"] == 30
    return Grown(directory, key, key_file, cp.public_key_path(key_file), record_file, record_head, rows, head_row)


async def _superuser(owner: asyncpg.Connection, *statements: tuple[str, tuple[object, ...]]) -> None:
    async with owner.transaction():
        await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for sql, args in statements:
            await owner.execute(sql, *args)
        await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


async def _rewrite_from(owner: asyncpg.Connection, start: int) -> None:
    """Change row `start`'s reason, recompute every later hash and the head: an internally consistent chain."""
    rows = [dict(r) for r in await owner.fetch(f"SELECT {audit.AUDIT_COLUMNS} FROM audit_log ORDER BY seq")]
    rows[start - 1]["reason"] = "nothing to see"
    prev = rows[start - 2]["hash"] if start > 1 else audit.GENESIS_HASH
    for r in rows[start - 1:]:
        r["prev_hash"], r["hash"] = prev, audit.chain_hash(prev, r)
        prev = r["hash"]
    await _superuser(owner, *[("UPDATE audit_log SET reason = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
                               (r["seq"], r["reason"], r["prev_hash"], r["hash"])) for r in rows[start - 1:]],
                     ("UPDATE audit_head SET seq = $1, hash = $2", (rows[-1]["seq"], prev)))


async def _restore(owner: asyncpg.Connection, g: Grown) -> None:
    await _superuser(
        owner, ("DELETE FROM audit_log", ()),
        *[(f"INSERT INTO audit_log ({audit.AUDIT_COLUMNS}) VALUES "
           "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)", tuple(r)) for r in g.rows],
        ("UPDATE audit_head SET seq = $1, hash = $2", (g.head["seq"], g.head["hash"])))
    assert (await audit.verify(owner)).ok


async def _against(owner: asyncpg.Connection, g: Grown) -> cp.CheckpointVerifyResult:
    loaded = cp.load_checkpoints(g.directory, g.public)
    return cp.verify_against(await cp.stored_hashes(owner, [c.seq for c in loaded]), loaded)


async def _cli(db_dsn: str, data_dir: Path, *args: str, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_")}
    proc = await asyncio.create_subprocess_exec(
        *CULTURECTL, "audit", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**clean, "CULTURECTL_DATABASE_URL": db_dsn, "CULTURECTL_DATA_DIR": str(data_dir), **env})
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# --------------------------------------------------------------------------------------------------
# Keys and files
# --------------------------------------------------------------------------------------------------


def test_the_key_is_created_0600_with_its_public_key_beside_it(grown: Grown) -> None:
    assert stat.S_IMODE(grown.key_file.stat().st_mode) == 0o600
    assert grown.public_file.name == "checkpoint-signing.pub.pem"
    assert cp.key_id(cp.load_public_key(grown.public_file)) == cp.key_id(grown.public)
    again = cp.load_or_create_signing_key(grown.key_file)  # the same key on the next start
    assert cp.key_id(again.public_key()) == cp.key_id(grown.public)
    other = grown.key_file.with_name("other.pem")
    cp.load_or_create_signing_key(other)
    shutil.copy(other.with_name("other.pub.pem"), grown.key_file.with_name("mixed.pub.pem"))
    shutil.copy(grown.key_file, grown.key_file.with_name("mixed.pem"))
    with pytest.raises(cp.CheckpointError, match=r"mixed\.pub\.pem: holds another key"):
        cp.load_or_create_signing_key(grown.key_file.with_name("mixed.pem"))


def test_checkpoints_are_one_signed_line_per_write_once_file_sorted_by_seq(grown: Grown) -> None:
    files = sorted(grown.directory.iterdir())
    assert [f.name.split("-")[1] for f in files] == [f"{s:019d}" for s in (10, 20, 30)]
    assert all(f.name.endswith("-interval.json") for f in files)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in files)
    text = files[0].read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    body = json.loads(text)
    assert set(body) == {"seq", "hash", "at", "reason", "key_id", "signature"}
    assert body["key_id"] == cp.key_id(grown.public) and body["at"].endswith("Z")
    loaded = cp.load_checkpoints(grown.directory, grown.public)
    assert [(c.seq, c.hash) for c in loaded] == [(r["seq"], r["hash"]) for r in grown.rows if r["seq"] % 10 == 0]
    # write-once: an existing file is never replaced
    assert not cp.write_once(files[0], b"{}\n", 0o444)
    assert files[0].read_text() == text


async def test_an_unchanged_head_is_not_checkpointed_again_except_at_release(
    app_pool: asyncpg.Pool, grown: Grown, tmp_path: Path,
) -> None:
    directory = tmp_path / "cps"
    shutil.copytree(grown.directory, directory)
    async with app_pool.acquire() as conn:
        same = await cp.write_checkpoint(conn, directory, grown.key, "interval")
        assert same.seq == 30 and same.path is not None and same.path.parent == directory
        assert len(list(directory.iterdir())) == 3
        release = await cp.write_checkpoint(conn, directory, grown.key, "release")
        assert release.seq == 30 and release.path is not None and release.path.name.endswith("-release.json")
        assert len(list(directory.iterdir())) == 4
        settings = Settings(data_dir=tmp_path, checkpoint_dir=directory, checkpoint_key_file=grown.key_file)

        class Runtime:  # what the release code passes: the runtime (or its settings)
            def __init__(self) -> None:
                self.settings = settings

        again = await cp.checkpoint_now(Runtime(), conn, "release")
        assert again.seq == 30 and again.path != release.path and len(list(directory.iterdir())) == 5
        async with conn.transaction():
            with pytest.raises(cp.CheckpointError, match="after the transaction commits"):
                await cp.checkpoint_now(settings, conn, "release")


async def test_the_service_task_writes_at_startup_and_when_the_head_moves(
    db_dsn: str, owner: asyncpg.Connection, grown: Grown, tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, checkpoint_interval_s=0.05)
    pool = await db.create_pool(db_dsn, min_size=1, max_size=1)
    task = asyncio.create_task(cp.run_checkpoints(pool, settings), name="audit-checkpoints")
    directory = tmp_path / "checkpoints"
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if directory.is_dir() and any(directory.iterdir()):
                break
        await asyncio.sleep(0.2)  # several passes: the head has not moved, nothing more is written
        names = sorted(p.name for p in directory.iterdir())
        assert len(names) == 1 and names[0].endswith("-startup.json"), names
        assert (tmp_path / "checkpoint-signing.pem").is_file() and (tmp_path / "checkpoint-signing.pub.pem").is_file()
        await _write(pool, 1)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(list(directory.iterdir())) == 2:
                break
        public = cp.load_public_key(tmp_path / "checkpoint-signing.pub.pem")
        assert [(c.seq, c.reason) for c in cp.load_checkpoints(directory, public)] == [(30, "startup"),
                                                                                      (31, "interval")]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pool.close()
        await _restore(owner, grown)


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


async def test_an_untouched_chain_passes(db_dsn: str, owner: asyncpg.Connection, grown: Grown,
                                         tmp_path: Path) -> None:
    result = await _against(owner, grown)
    assert result.ok and (result.checked, result.matched) == (3, 3) and result.first_mismatch is None
    stored = await cp.stored_hashes(owner, [15])
    assert cp.verify_record(stored, json.loads(grown.record_file.read_text()), "r.json").ok
    code, out = await _cli(db_dsn, tmp_path, "verify", "--checkpoints", str(grown.directory),
                           "--public-key", str(grown.public_file), "--record", str(grown.record_file))
    assert code == 0, out
    assert "audit trail ok: 30 rows" in out and "checkpoints ok: 3 checked" in out
    assert "chain head seq 15 matches the database" in out


async def test_a_chain_rewritten_from_the_middle_is_found_by_the_checkpoints_and_the_record(
    db_dsn: str, owner: asyncpg.Connection, grown: Grown, tmp_path: Path,
) -> None:
    try:
        await _rewrite_from(owner, 15)
        # the gap being closed: the rewritten chain is internally consistent
        inside = await audit.verify(owner)
        assert inside.ok and inside.rows == 30 and inside.last_hash != grown.head["hash"]

        result = await _against(owner, grown)
        assert not result.ok and result.first_mismatch is not None and result.last_match is not None
        assert (result.first_mismatch.seq, result.last_match.seq) == (20, 10)
        assert (result.suspect_from, result.suspect_to) == (11, 20)
        assert result.stored_hash == (await owner.fetchval("SELECT hash FROM audit_log WHERE seq = 20"))
        first_file = result.first_mismatch.path
        assert first_file is not None and first_file.name.split("-")[1] == f"{20:019d}"

        stored = await cp.stored_hashes(owner, [15])
        check = cp.verify_record(stored, json.loads(grown.record_file.read_text()), "r.json")
        assert not check.ok and check.seq == 15 and "rewritten at or before seq 15" in check.describe()

        # the service refuses to sign the rewritten head
        pool = await db.create_pool(db_dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                with pytest.raises(cp.CheckpointError, match=r"seq 30: the database's hash no longer matches"):
                    await cp.write_checkpoint(conn, grown.directory, grown.key, "release")
        finally:
            await pool.close()
        assert len(list(grown.directory.iterdir())) == 3

        code, out = await _cli(db_dsn, tmp_path, "verify", "--checkpoints", str(grown.directory),
                               "--public-key", str(grown.public_file), "--record", str(grown.record_file))
        assert code == 1, out
        assert "audit trail ok: 30 rows" in out  # the database alone sees nothing
        assert "checkpoint MISMATCH at seq 20" in out and first_file.name in out
        assert "first row that no longer matches a checkpoint is seq 20" in out and "seq 11..20" in out
        assert f"record {grown.record_file} MISMATCH" in out

        code, out = await _cli(db_dsn, tmp_path, "verify", "--json", "--checkpoints", str(grown.directory),
                               "--public-key", str(grown.public_file))
        report = json.loads(out)
        assert code == 1 and report["chain_ok"] is True and report["ok"] is False
        assert report["checkpoints"]["suspect_rows"] == [11, 20]
        assert report["checkpoints"]["first_mismatch"]["file"] == str(first_file)
    finally:
        await _restore(owner, grown)


@pytest.mark.parametrize(("start", "first", "last_match", "rows"),
                         [(1, 10, None, (1, 10)), (10, 10, None, (1, 10)), (11, 20, 10, (11, 20)),
                          (30, 30, 20, (21, 30))])
async def test_the_first_mismatching_checkpoint_bounds_where_the_rewrite_starts(
    owner: asyncpg.Connection, grown: Grown, start: int, first: int, last_match: int | None,
    rows: tuple[int, int],
) -> None:
    try:
        await _rewrite_from(owner, start)
        assert (await audit.verify(owner)).ok
        result = await _against(owner, grown)
        assert result.first_mismatch is not None and result.first_mismatch.seq == first
        assert (None if result.last_match is None else result.last_match.seq) == last_match
        assert (result.suspect_from, result.suspect_to) == rows
    finally:
        await _restore(owner, grown)


async def test_rows_cut_from_the_end_with_the_head_moved_back_are_found(owner: asyncpg.Connection,
                                                                        grown: Grown) -> None:
    try:
        await _superuser(owner, ("DELETE FROM audit_log WHERE seq > 25", ()),
                         ("UPDATE audit_head SET seq = 25, hash = $1", (grown.rows[24]["hash"],)))
        assert (await audit.verify(owner)).ok
        result = await _against(owner, grown)
        assert result.first_mismatch is not None and result.first_mismatch.seq == 30
        assert result.stored_hash is None and (result.suspect_from, result.suspect_to) == (21, 30)
        assert "the database has no row" in result.describe()
    finally:
        await _restore(owner, grown)


# --------------------------------------------------------------------------------------------------
# Refused checkpoint files
# --------------------------------------------------------------------------------------------------


def _edit(path: Path, **fields: object) -> None:
    body = json.loads(path.read_text())
    body.update(fields)
    path.chmod(0o644)
    path.write_text(json.dumps(body) + "\n")


async def test_an_edited_checkpoint_is_refused_naming_the_file(db_dsn: str, grown: Grown, tmp_path: Path) -> None:
    directory = tmp_path / "cps"
    shutil.copytree(grown.directory, directory)
    second = sorted(directory.iterdir())[1]
    original = json.loads(second.read_text())
    # the signature edited: another valid-looking Ed25519 signature
    raw = bytearray(base64.b64decode(original["signature"]))
    raw[0] ^= 1
    _edit(second, signature=base64.b64encode(bytes(raw)).decode())
    with pytest.raises(cp.CheckpointError, match=rf"{second.name}: bad signature: the file was altered"):
        cp.load_checkpoints(directory, grown.public)
    # the hash edited to match a rewritten chain, the signature left as it was
    _edit(second, signature=original["signature"], hash="f" * 64)
    with pytest.raises(cp.CheckpointError, match=rf"{second.name}: bad signature"):
        cp.load_checkpoints(directory, grown.public)
    # garbage, a missing field, another key
    _edit(second, signature="not base64!")
    with pytest.raises(cp.CheckpointError, match=rf"{second.name}: bad signature \(not a base64"):
        cp.load_checkpoints(directory, grown.public)
    second.write_text(json.dumps({k: v for k, v in original.items() if k != "reason"}))
    with pytest.raises(cp.CheckpointError, match=rf"{second.name}: not a checkpoint"):
        cp.load_checkpoints(directory, grown.public)
    second.write_text(json.dumps(original))
    assert len(cp.load_checkpoints(directory, grown.public)) == 3
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(cp.CheckpointError, match=r"signed by key [0-9a-f]{64}, not by the public key given"):
        cp.load_checkpoints(directory, stranger)
    assert len(cp.load_checkpoints(directory, [stranger, grown.public])) == 3  # a rotated key: both given

    _edit(second, signature=base64.b64encode(bytes(raw)).decode())
    code, out = await _cli(db_dsn, tmp_path, "verify", "--checkpoints", str(directory),
                           "--public-key", str(grown.public_file))
    assert code == 1 and "checkpoint refused" in out and second.name in out, out


async def test_the_checkpoint_command_writes_one_now(db_dsn: str, grown: Grown, tmp_path: Path) -> None:
    env = {"CULTURECTL_CHECKPOINT_DIR": str(tmp_path / "site-cps"),
           "CULTURECTL_CHECKPOINT_KEY_FILE": str(tmp_path / "hsm-host" / "site.pem")}
    code, out = await _cli(db_dsn, tmp_path, "checkpoint", **env)
    assert code == 0 and "seq 30" in out, out
    [made] = list((tmp_path / "site-cps").iterdir())
    assert made.name.endswith("-manual.json")
    code, out = await _cli(db_dsn, tmp_path, "checkpoint", **env)
    assert code == 0 and "has not moved" in out and len(list((tmp_path / "site-cps").iterdir())) == 1, out
    # verify finds the public key beside the configured key file
    code, out = await _cli(db_dsn, tmp_path, "verify", "--checkpoints", str(tmp_path / "site-cps"), **env)
    assert code == 0 and "checkpoints ok: 1 checked" in out, out


def test_verify_against_is_pure_and_needs_a_checkpoint(grown: Grown) -> None:
    loaded = cp.load_checkpoints(grown.directory, grown.public)
    table = {r["seq"]: r["hash"] for r in grown.rows}
    assert cp.verify_against(table, loaded).ok
    assert cp.verify_against(table.get, loaded).ok
    nothing = cp.verify_against(table, [])
    assert not nothing.ok and nothing.describe() == "no checkpoints to verify against"
    with pytest.raises(cp.CheckpointError, match="no top-level 'audit_chain'"):
        cp.verify_record(table, {"run": {}}, "old.json")
