"""What the protocol's services share: JSON-ready views, 404 problems, the signature meaning check."""

from __future__ import annotations

import json
from typing import Any

from app.core.problems import Problem
from app.records import audit
from app.records.signatures import SignatureInput


def json_ready(value: Any) -> Any:
    """A JSON-ready copy (times as ISO text) for API bodies and jsonb columns."""
    return json.loads(audit.to_json_text(value))


def not_found(kind: str, what: str) -> Problem:
    return Problem(404, f"{kind}-not-found", "Not found", what)


def invalid(rule: str, detail: str, field: str) -> Problem:
    """A 422 naming the rule and the body field, like a validation error."""
    return Problem(422, "validation-error", "Request is not valid", detail, rule=rule,
                   errors=[{"loc": ["body", field], "msg": detail, "type": rule}])


def require_meaning(signature: SignatureInput, meaning: str, what: str) -> None:
    if signature.meaning != meaning:
        raise Problem(422, "signature-meaning", "Wrong signature meaning",
                      f"{what} is signed with the meaning {meaning!r}, not {signature.meaning!r}",
                      rule="signature_meaning")
