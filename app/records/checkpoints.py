"""Signed checkpoints of the audit chain, kept outside the database: tamper evidence a database superuser cannot forge.

The hash chain (app/records/audit.py) lives in the same database as the data. Someone with the database superuser
can rewrite it from some row on, recompute every later hash and move `audit_head` too, and the in-database `verify`
finds nothing wrong: the rewritten chain is internally consistent. A checkpoint closes that gap. It says "at time
`at` the chain head was row `seq` with hash `hash`", signed with an Ed25519 key kept outside the database, and is
written as one file into a directory the site chooses (ideally write-once storage). Later, `verify_against` compares
the database's stored hash at each checkpoint's seq with the checkpoint: a rewrite shows up at the first checkpoint
taken after the first rewritten row.

A checkpoint file holds one JSON line:

    {"at": "2026-11-21T09:00:00.000000Z", "hash": "<64 hex>", "key_id": "<64 hex>", "reason": "interval",
     "seq": 30, "signature": "<base64>"}

- `signature`: Ed25519 over the canonical JSON (`audit.canonical_json`) of the other five fields.
- `key_id`: the key's fingerprint, the SHA-256 (hex) of the raw 32-byte public key.
- `reason`: `startup` and `interval` (the service's task), `release` (at each release), `manual`
  (`culturectl audit checkpoint`), or another lower-case word a caller gives.
- file name `checkpoint-<seq, 19 digits>-<at, compact UTC>-<reason>.json`: the names sort by seq, then time.
  Files are written to a temporary name, fsynced, then linked into place (never over an existing file) and made
  read-only: write-once.

Before signing, `write_checkpoint` checks that the chain still extends the newest valid checkpoint in the directory
(the stored hash at its seq is unchanged and every later row chains up to the head): the service never signs a
chain that was rewritten since its last checkpoint.

Issued records (the batch record) carry the chain head too, at the top level under `RECORD_CHAIN_KEY`:
`{"audit_chain": {"seq": n, "hash": "<64 hex>"}, ...}` (`record_chain_head` gives that value); `verify_record`
checks that the database's row `seq` still has that hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app import db
from app.core.outage import OutageLog
from app.db import DBConnection
from app.records.audit import AUDIT_COLUMNS, GENESIS_HASH, canonical_json, check_chain, utc_iso
from app.settings import Settings

log = logging.getLogger("culturectl.checkpoints")

RECORD_CHAIN_KEY = "audit_chain"
"""Top-level key of an issued record (batch record JSON) that holds the chain head: {"seq": n, "hash": "<hex>"}."""

KEY_FILE = "checkpoint-signing.pem"
DIR_NAME = "checkpoints"
FILE_PREFIX = "checkpoint-"
RELEASE = "release"
BODY_FIELDS = ("at", "hash", "key_id", "reason", "seq")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_BATCH = 2000


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read: bad file, bad signature, unusable key, or a chain that no longer
    extends the last checkpoint. The message names the file or the row."""


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed statement "the chain head was (seq, hash) at `at`"; `path` is the file it was read from or written
    to."""

    seq: int
    hash: str
    at: datetime
    reason: str
    key_id: str
    signature: str
    path: Path | None = None

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {"at": utc_iso(self.at), "hash": self.hash, "key_id": self.key_id, "reason": self.reason,
                "seq": self.seq}

    def as_dict(self) -> dict[str, Any]:
        """The file's content."""
        return {**self.body(), "signature": self.signature}

    def name(self) -> str:
        return self.path.name if self.path is not None else f"checkpoint at seq {self.seq}"

    def file_name(self) -> str:
        """`checkpoint-<seq>-<at>-<reason>.json`: sorts by seq, then time."""
        return f"{FILE_PREFIX}{self.seq:019d}-{self.at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{self.reason}.json"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's fingerprint: SHA-256 (hex) of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(key: Ed25519PrivateKey, *, seq: int, hash: str, at: datetime, reason: str) -> Checkpoint:
    """A checkpoint of (seq, hash) at `at`, signed with `key`."""
    if not _REASON.match(reason):
        raise ValueError(f"checkpoint reason {reason!r}: one lower-case word (a-z, 0-9, _)")
    if seq < 0 or not _HEX64.match(hash):
        raise ValueError(f"checkpoint of seq {seq}, hash {hash!r}: a seq >= 0 and a 64-digit lower-case hex hash")
    unsigned = Checkpoint(seq=seq, hash=hash, at=at.astimezone(UTC), reason=reason,
                          key_id=key_id(key.public_key()), signature="")
    signature = key.sign(canonical_json(unsigned.body()).encode())
    return Checkpoint(seq=unsigned.seq, hash=hash, at=unsigned.at, reason=reason, key_id=unsigned.key_id,
                      signature=base64.b64encode(signature).decode())


def parse_checkpoint(text: str, public_keys: Sequence[Ed25519PublicKey], source: Path | str) -> Checkpoint:
    """The checkpoint in `text` (a file's content), after checking its fields and its signature against one of
    `public_keys`; CheckpointError naming `source` otherwise."""
    where = str(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not a checkpoint (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or set(data) != {*BODY_FIELDS, "signature"}:
        fields = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{where}: not a checkpoint (fields {fields}, expected "
                              f"{sorted({*BODY_FIELDS, 'signature'})})")
    seq, hash_, at, reason, kid, signature = (data[k] for k in ("seq", "hash", "at", "reason", "key_id", "signature"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise CheckpointError(f"{where}: seq {seq!r} is not a whole number >= 0")
    for name, value in (("hash", hash_), ("key_id", kid)):
        if not isinstance(value, str) or not _HEX64.match(value):
            raise CheckpointError(f"{where}: {name} {value!r} is not 64 lower-case hex digits")
    if not isinstance(reason, str) or not _REASON.match(reason):
        raise CheckpointError(f"{where}: reason {reason!r} is not one lower-case word")
    try:
        when = datetime.strptime(at, _AT_FORMAT).replace(tzinfo=UTC) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None:
        raise CheckpointError(f"{where}: at {at!r} is not a UTC time like 2026-11-21T09:00:00.000000Z")
    try:
        raw_signature = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
    except (binascii.Error, ValueError):
        raw_signature = b""
    if len(raw_signature) != 64:
        raise CheckpointError(f"{where}: bad signature (not a base64 Ed25519 signature): the file was altered")
    keys = [k for k in public_keys if key_id(k) == kid]
    if not keys:
        known = ", ".join(key_id(k) for k in public_keys) or "none"
        raise CheckpointError(f"{where}: signed by key {kid}, not by the public key given ({known})")
    message = canonical_json({k: data[k] for k in BODY_FIELDS}).encode()
    try:
        keys[0].verify(raw_signature, message)
    except InvalidSignature:
        raise CheckpointError(f"{where}: bad signature: the file was altered after it was signed "
                              f"(key {kid})") from None
    return Checkpoint(seq=seq, hash=hash_, at=when, reason=reason, key_id=kid, signature=signature,
                      path=source if isinstance(source, Path) else None)


def _checkpoint_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    return sorted(p for p in directory.iterdir() if p.name.startswith(FILE_PREFIX) and p.name.endswith(".json"))


def _keys(public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey]) -> list[Ed25519PublicKey]:
    return [public_key] if isinstance(public_key, Ed25519PublicKey) else list(public_key)


def load_checkpoints(directory: Path, public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey]) -> list[Checkpoint]:
    """Every checkpoint file (`checkpoint-*.json`) in `directory`, by seq then time; CheckpointError naming the
    first file that is not a valid checkpoint or whose signature does not verify with the public key(s)."""
    keys = _keys(public_key)
    out = []
    for path in _checkpoint_files(directory):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot be read: {exc}") from None
        out.append(parse_checkpoint(text, keys, path))
    return sorted(out, key=lambda c: (c.seq, c.at))


def last_checkpoint(directory: Path, public_key: Ed25519PublicKey) -> Checkpoint | None:
    """The newest checkpoint in `directory` that verifies with `public_key` (files that do not are skipped with a
    warning), or None."""
    if not directory.is_dir():
        return None
    for path in reversed(_checkpoint_files(directory)):
        try:
            return parse_checkpoint(path.read_text(encoding="utf-8"), [public_key], path)
        except (CheckpointError, OSError, UnicodeDecodeError) as exc:
            log.warning("audit checkpoint %s skipped: %s", path, exc)
    return None


# --------------------------------------------------------------------------------------------------
# Files and keys
# --------------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened or synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_once(path: Path, data: bytes, mode: int) -> bool:
    """Write `data` to `path` atomically, never over an existing file: a temporary file in the same directory,
    fsynced, then hard-linked into place (a rename where the file system has no hard links). Returns False when
    `path` exists already (nothing written)."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            with contextlib.suppress(OSError):
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network and object-store mounts)
            if path.exists():
                return False
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(directory)
    return True


def public_key_path(key_file: Path) -> Path:
    """Where the public key of `key_file` is written: `checkpoint-signing.pem` -> `checkpoint-signing.pub.pem`."""
    stem = key_file.name[:-4] if key_file.name.endswith(".pem") else key_file.name
    return key_file.with_name(f"{stem}.pub.pem")


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_signing_key(key_file: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in `key_file` (PEM, unencrypted PKCS#8), created (mode 0600) on first use, with its
    public key written beside it (`public_key_path`). CheckpointError when the file is unusable or the public key
    file beside it belongs to another key."""
    try:
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = Ed25519PrivateKey.generate()
            pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            if write_once(key_file, pem, 0o600):
                log.info("audit checkpoints: new signing key %s (key id %s)", key_file, key_id(new.public_key()))
        data = key_file.read_bytes()
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError as exc:
        raise CheckpointError(f"{key_file}: cannot read or create the checkpoint signing key: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{key_file}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{key_file}: a {type(key).__name__}, not an Ed25519 key")
    if mode & 0o077:
        log.warning("audit checkpoints: %s is readable by others (mode %o): make it 0600", key_file, mode)
    pub_file = public_key_path(key_file)
    pem = _public_pem(key.public_key())
    try:
        if not pub_file.exists():
            write_once(pub_file, pem, 0o644)
        elif key_id(load_public_key(pub_file)) != key_id(key.public_key()):
            raise CheckpointError(f"{pub_file}: holds another key than {key_file} (key id "
                                  f"{key_id(key.public_key())}): move it away, a new one is written")
    except OSError as exc:
        raise CheckpointError(f"{pub_file}: cannot write the public key: {exc}") from None
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (also accepts the private key file: its public half)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the public key: {exc}") from None
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def checkpoint_dir(settings: Settings) -> Path:
    """CULTURECTL_CHECKPOINT_DIR, else data_dir/checkpoints."""
    return settings.checkpoint_dir or Path(settings.data_dir) / DIR_NAME


def checkpoint_key_file(settings: Settings) -> Path:
    """CULTURECTL_CHECKPOINT_KEY_FILE, else data_dir/checkpoint-signing.pem."""
    return settings.checkpoint_key_file or Path(settings.data_dir) / KEY_FILE


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


async def _check_extends(conn: DBConnection, base: Checkpoint | None, head_seq: int, head_hash: str) -> None:
    """CheckpointError unless the chain from `base` (or from the start) up to the head is intact: the stored hash at
    base.seq is base.hash and every later row chains up to the head."""
    after, prev = (0, GENESIS_HASH) if base is None else (base.seq, base.hash)
    since = "the start of the chain" if base is None else f"the last checkpoint {base.name()} (seq {base.seq})"
    if head_seq < after:
        raise CheckpointError(f"the chain head is at seq {head_seq}, behind {since}: rows were removed; "
                              "no checkpoint signed")
    if after > 0:
        stored = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", after)
        if stored != prev:
            raise CheckpointError(f"seq {after}: the database's hash no longer matches {since}: the chain was "
                                  "rewritten; no checkpoint signed (run `culturectl audit verify --checkpoints`)")
    while after < head_seq:
        rows = await conn.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 AND seq <= $2 "
                                "ORDER BY seq LIMIT $3", after, head_seq, _BATCH)
        if not rows:
            break
        brk, _, after, prev = check_chain(rows, start_seq=after + 1, start_hash=prev)
        if brk is not None:
            raise CheckpointError(f"the audit chain is broken at seq {brk.seq} ({brk.kind}): {brk.detail}; "
                                  "no checkpoint signed")
    if after != head_seq or prev != head_hash:
        raise CheckpointError(f"the chain head (seq {head_seq}) does not match its rows (they chain up to seq "
                              f"{after}); no checkpoint signed")


async def write_checkpoint(conn: DBConnection, directory: Path, key: Ed25519PrivateKey, reason: str,
                           at: datetime | None = None, *, force: bool = False) -> Checkpoint:
    """Sign the chain head (audit_head) and write it as a new checkpoint file in `directory`.

    Runs outside any transaction (after the commit of whatever it attests: an uncommitted head could still roll
    back), in one read-only snapshot. Before signing it checks that the chain still extends the newest valid
    checkpoint in `directory`; CheckpointError otherwise (nothing is written). When the head has not moved since
    that checkpoint it writes nothing and returns that checkpoint, unless `force` or the reason is `release`.
    `at` defaults to now (wall clock, UTC).
    """
    if conn.is_in_transaction():
        raise CheckpointError("write a checkpoint after the transaction commits, not inside it")
    if not _REASON.match(reason):
        raise ValueError(f"checkpoint reason {reason!r}: one lower-case word (a-z, 0-9, _)")
    public = key.public_key()
    base = await asyncio.to_thread(last_checkpoint, directory, public)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
        if head is None:
            raise CheckpointError("audit_head is missing: run the migrations (culturectl db upgrade)")
        head_seq, head_hash = int(head["seq"]), str(head["hash"])
        if base is not None and (base.seq, base.hash) == (head_seq, head_hash) and not (force or reason == RELEASE):
            return base
        await _check_extends(conn, base, head_seq, head_hash)
    checkpoint = sign(key, seq=head_seq, hash=head_hash, at=at or datetime.now(UTC), reason=reason)
    path = directory / checkpoint.file_name()
    data = (json.dumps(checkpoint.as_dict(), sort_keys=True, separators=(",", ":")) + "\n").encode()
    try:
        written = await asyncio.to_thread(write_once, path, data, 0o444)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the checkpoint: {exc}") from None
    if not written:
        raise CheckpointError(f"{path} exists already: checkpoints are write-once")
    log.info("audit checkpoint %s: seq %d, hash %s (%s)", path, head_seq, head_hash, reason)
    return Checkpoint(seq=checkpoint.seq, hash=checkpoint.hash, at=checkpoint.at, reason=checkpoint.reason,
                      key_id=checkpoint.key_id, signature=checkpoint.signature, path=path)


class _HasSettings(Protocol):
    @property
    def settings(self) -> Settings: ...


async def checkpoint_now(runtime_or_settings: Settings | _HasSettings, conn: DBConnection,
                         reason: str) -> Checkpoint:
    """Write a checkpoint now with the configured key and directory (CULTURECTL_CHECKPOINT_KEY_FILE and _DIR).

    The release code calls it with reason "release" after the release transaction commits, on a connection not in
    a transaction (a pool connection): a release always gets its own checkpoint. Raises CheckpointError when the
    key or the directory is unusable, or when the chain no longer extends the last checkpoint (the release itself
    stays committed: log it and raise the alarm).
    """
    settings = runtime_or_settings if isinstance(runtime_or_settings, Settings) else runtime_or_settings.settings
    key = await asyncio.to_thread(load_or_create_signing_key, checkpoint_key_file(settings))
    return await write_checkpoint(conn, checkpoint_dir(settings), key, reason)


async def run_checkpoints(pool: asyncpg.Pool, settings: Settings) -> None:
    """The service's "audit-checkpoints" task: a checkpoint at start-up, then one every
    CULTURECTL_CHECKPOINT_INTERVAL_S wall seconds (none when the head has not moved)."""
    interval = settings.checkpoint_interval_s
    outage = OutageLog(log, "audit checkpoints: database unavailable")
    reason, problem = "startup", ""
    while True:
        try:
            async with pool.acquire() as conn:
                await checkpoint_now(settings, conn, reason)
            outage.ok()
            reason, problem = "interval", ""
        except CheckpointError as exc:
            if str(exc) != problem:  # once per problem, not once per pass
                log.error("audit checkpoint not written: %s", exc)
                problem = str(exc)
        except db.UNAVAILABLE as exc:
            outage.failed(exc)
        except Exception:
            log.exception("audit checkpoint not written")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------------

HashLookup = Mapping[int, str] | Callable[[int], str | None]
"""The database's stored hash per seq: a mapping, or a function (None: no such row)."""


def _stored(lookup: HashLookup, seq: int) -> str | None:
    if seq == 0:
        return GENESIS_HASH
    if callable(lookup):
        return lookup(seq)
    return lookup.get(seq)


@dataclass(frozen=True, slots=True)
class CheckpointVerifyResult:
    """Checkpoints against the database's stored hashes.

    A rewrite that recomputes every later hash is internally consistent, so it shows only where a checkpoint was
    taken: `first_mismatch` is the first checkpoint (by seq) whose seq's stored hash differs (or whose row is gone).
    Its seq is the first row known not to match; the rewrite starts at a row in `suspect_from`..`suspect_to`: after
    `last_match` (the last checkpoint below it that still matches; rows up to there are as signed) and at or before
    the mismatching checkpoint's seq.
    """

    ok: bool
    checked: int
    matched: int
    last_match: Checkpoint | None
    first_mismatch: Checkpoint | None
    stored_hash: str | None  # the database's hash at first_mismatch.seq (None: the row is gone)
    suspect_from: int | None
    suspect_to: int | None
    newest: Checkpoint | None

    def describe(self) -> str:
        if self.checked == 0:
            return "no checkpoints to verify against"
        if self.first_mismatch is None:
            n = self.newest
            assert n is not None
            return (f"checkpoints ok: {self.checked} checked, the chain is as signed up to seq {n.seq} "
                    f"({n.name()}, {utc_iso(n.at)})")
        cp = self.first_mismatch
        stored = "no row" if self.stored_hash is None else f"hash {self.stored_hash}"
        after = ("no earlier checkpoint matches" if self.last_match is None else
                 f"the last matching checkpoint is {self.last_match.name()} at seq {self.last_match.seq}")
        return (f"checkpoint MISMATCH at seq {cp.seq} ({cp.name()}, {utc_iso(cp.at)}): signed hash {cp.hash}, the "
                f"database has {stored}. The first row that no longer matches a checkpoint is seq {cp.seq}; the "
                f"rewrite starts at a row in seq {self.suspect_from}..{self.suspect_to} ({after}).")

    def as_dict(self) -> dict[str, Any]:
        def cp(c: Checkpoint | None) -> dict[str, Any] | None:
            return None if c is None else {**c.body(), "file": None if c.path is None else str(c.path)}

        return {"ok": self.ok, "checked": self.checked, "matched": self.matched, "last_match": cp(self.last_match),
                "first_mismatch": cp(self.first_mismatch), "stored_hash": self.stored_hash,
                "suspect_rows": None if self.suspect_from is None else [self.suspect_from, self.suspect_to],
                "newest": cp(self.newest), "message": self.describe()}


def verify_against(lookup: HashLookup, checkpoints: Sequence[Checkpoint]) -> CheckpointVerifyResult:
    """Compare each checkpoint with the stored hash at its seq (pure: `lookup` gives the stored hashes). Not ok when
    there is no checkpoint at all: nothing was verified."""
    ordered = sorted(checkpoints, key=lambda c: (c.seq, c.at))
    matched = 0
    last_match: Checkpoint | None = None
    for c in ordered:
        stored = _stored(lookup, c.seq)
        if stored == c.hash:
            matched += 1
            last_match = c
            continue
        below = [m for m in ordered if m.seq < c.seq and _stored(lookup, m.seq) == m.hash]
        previous = below[-1] if below else None
        return CheckpointVerifyResult(
            ok=False, checked=len(ordered), matched=matched, last_match=previous, first_mismatch=c,
            stored_hash=stored, suspect_from=1 if previous is None else previous.seq + 1, suspect_to=max(c.seq, 1),
            newest=ordered[-1])
    return CheckpointVerifyResult(ok=bool(ordered), checked=len(ordered), matched=matched, last_match=last_match,
                                  first_mismatch=None, stored_hash=None, suspect_from=None, suspect_to=None,
                                  newest=ordered[-1] if ordered else None)


async def stored_hashes(conn: DBConnection, seqs: Sequence[int]) -> dict[int, str]:
    """The database's stored hash of each of these rows (rows that do not exist are left out)."""
    rows = await conn.fetch("SELECT seq, hash FROM audit_log WHERE seq = ANY($1::bigint[])", sorted(set(seqs)))
    return {int(r["seq"]): str(r["hash"]) for r in rows}


# --------------------------------------------------------------------------------------------------
# Issued records
# --------------------------------------------------------------------------------------------------


async def record_chain_head(conn: DBConnection) -> dict[str, Any]:
    """The value an issued record carries under RECORD_CHAIN_KEY: the chain head, {"seq": n, "hash": "<hex>"}.

    Read it in the snapshot the record is built from, after the record's own audit rows are committed.
    """
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    if head is None:
        raise CheckpointError("audit_head is missing: run the migrations (culturectl db upgrade)")
    return {"seq": int(head["seq"]), "hash": str(head["hash"])}


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """An issued record's chain head against the database."""

    ok: bool
    source: str
    seq: int
    hash: str
    stored_hash: str | None

    def describe(self) -> str:
        if self.ok:
            return f"record {self.source}: chain head seq {self.seq} matches the database"
        stored = "has no such row" if self.stored_hash is None else f"has hash {self.stored_hash}"
        return (f"record {self.source} MISMATCH: it carries chain head seq {self.seq} hash {self.hash}, the "
                f"database's row seq {self.seq} {stored}: the chain was rewritten at or before seq {self.seq}")

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "source": self.source, "seq": self.seq, "hash": self.hash,
                "stored_hash": self.stored_hash, "message": self.describe()}


def record_head(record: Any, source: str) -> tuple[int, str]:
    """(seq, hash) of an issued record's `audit_chain`; CheckpointError naming `source` when it has none."""
    chain = record.get(RECORD_CHAIN_KEY) if isinstance(record, dict) else None
    if not isinstance(chain, dict):
        raise CheckpointError(f"{source}: no top-level {RECORD_CHAIN_KEY!r} object (the chain head) in the record")
    seq, hash_ = chain.get("seq"), chain.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise CheckpointError(f"{source}: {RECORD_CHAIN_KEY}.seq {seq!r} is not a whole number >= 0")
    if not isinstance(hash_, str) or not _HEX64.match(hash_):
        raise CheckpointError(f"{source}: {RECORD_CHAIN_KEY}.hash {hash_!r} is not 64 lower-case hex digits")
    return seq, hash_


def verify_record(lookup: HashLookup, record: Any, source: str) -> RecordCheck:
    """Whether the database's row at the record's chain-head seq still has the record's hash (pure)."""
    seq, hash_ = record_head(record, source)
    stored = _stored(lookup, seq)
    return RecordCheck(ok=stored == hash_, source=source, seq=seq, hash=hash_, stored_hash=stored)
