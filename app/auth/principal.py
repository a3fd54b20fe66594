"""Who is acting: a user, an API key (automation scripts) or the service itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class Role(enum.StrEnum):
    """Roles of 21 CFR Part 11 accountability; one per account or key."""

    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    QA = "qa"
    AUTOMATION = "automation"
    ADMIN = "admin"


PrincipalKind = Literal["user", "apikey", "system"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated actor of a request, as the audit trail records it.

    `id` is the user id or the API key id; `name` the username or the key's name; for an API key,
    `user_id` is the admin who created it (keys act under their own name and role).
    """

    kind: PrincipalKind
    id: int | None
    name: str
    role: Role
    display_name: str = ""
    user_id: int | None = None
    token_id: str | None = None

    @property
    def can_sign(self) -> bool:
        """Automation accounts and API keys can never sign (21 CFR 11.100: signatures are personal)."""
        return self.kind == "user" and self.role is not Role.AUTOMATION

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


SYSTEM = Principal(kind="system", id=None, name="culturectl", role=Role.ADMIN, display_name="culturectl service")


def cli_principal() -> Principal:
    """The actor of `culturectl user|apikey ...` commands: the operating-system user who ran them."""
    import getpass

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Principal(kind="system", id=None, name=f"cli:{who}", role=Role.ADMIN,
                     display_name=f"culturectl command line ({who})")
