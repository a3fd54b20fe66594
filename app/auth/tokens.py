"""Session tokens (HS256 JWTs with a jti that names a row of `sessions`) and the key that signs them."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from app.settings import Settings

ALGORITHM = "HS256"
ISSUER = "culturectl"
COOKIE_NAME = "culturectl_session"
KEY_FILE = "secret.key"


def load_signing_key(settings: Settings) -> bytes:
    """settings.secret_key, else the key in data_dir/secret.key, created (mode 0600) on first use."""
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value().encode()
        if len(key) < 32:
            raise ValueError("CULTURECTL_SECRET_KEY must be at least 32 characters long")
        return key
    path = Path(settings.data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    key = path.read_text().strip().encode()
    if len(key) < 32:
        raise ValueError(f"{path} holds a key shorter than 32 characters; delete it to make a new one")
    return key


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: datetime
    expires_at: datetime


def issue(key: bytes, user_id: int, ttl: timedelta, now: datetime | None = None,
          jti: str | None = None) -> IssuedToken:
    """A signed token for `user_id`; its jti is stored in `sessions` by the caller (a renewal keeps the jti)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = now + max(ttl, timedelta(seconds=1))
    jti = jti or secrets.token_urlsafe(16)
    claims = {"sub": str(user_id), "jti": jti, "iat": now, "exp": expires, "iss": ISSUER}
    return IssuedToken(jwt.encode(claims, key, algorithm=ALGORITHM), jti, now, expires)


def decode(key: bytes, token: str) -> dict[str, Any]:
    """The claims of a valid, unexpired token; jwt.InvalidTokenError (or a subclass) otherwise."""
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["exp", "iat", "sub", "jti", "iss"]}
    )
    return claims
