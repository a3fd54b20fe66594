"""Password hashing (Argon2id through pwdlib) and the password rules."""

from __future__ import annotations

import asyncio
import string

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.problems import Problem

MIN_LENGTH = 12
MAX_LENGTH = 256

_HASHER = PasswordHash((Argon2Hasher(),))  # argon2id with the library's (OWASP) defaults
# A hash of nothing anyone knows: unknown usernames are checked against it so that they cost as much time
# as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash("culturectl-no-such-user-" + "x" * 16)

CLASSES = {
    "lower-case letters": set(string.ascii_lowercase),
    "upper-case letters": set(string.ascii_uppercase),
    "digits": set(string.digits),
}


class PasswordRuleError(Problem):
    """422 naming the password rule that was broken."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(422, "password-rule", "Password does not meet the rules", detail, rule=rule)
        self.rule = rule


def _classes(password: str) -> set[str]:
    found = {name for name, chars in CLASSES.items() if any(c in chars for c in password)}
    if any(not any(c in chars for chars in CLASSES.values()) for c in password):
        found.add("symbols")
    return found


def check_password_rules(username: str, password: str) -> None:
    """Raise PasswordRuleError (its detail names the rule) unless `password` is acceptable for `username`."""
    if len(password) < MIN_LENGTH:
        raise PasswordRuleError("min-length", f"password must be at least {MIN_LENGTH} characters long "
                                              f"(it has {len(password)})")
    if len(password) > MAX_LENGTH:
        raise PasswordRuleError("max-length", f"password must be at most {MAX_LENGTH} characters long")
    if username and username.casefold() in password.casefold():
        raise PasswordRuleError("contains-username", "password must not contain the username")
    if len(_classes(password)) < 2:
        raise PasswordRuleError(
            "character-classes",
            "password must mix at least two character classes (lower-case letters, upper-case letters, "
            "digits, symbols); it uses only one",
        )


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_hash(password: str, password_hash: str | None) -> bool:
    """True when `password` matches; a None hash (unknown user) costs the same time and is False."""
    ok = _HASHER.verify(password, password_hash or _DUMMY_HASH)
    return ok and password_hash is not None


async def hash_password_async(password: str) -> str:
    """Argon2id takes tens of milliseconds: off the event loop."""
    return await asyncio.to_thread(hash_password, password)


async def verify_hash_async(password: str, password_hash: str | None) -> bool:
    return await asyncio.to_thread(verify_hash, password, password_hash)
