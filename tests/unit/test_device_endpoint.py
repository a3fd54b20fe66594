"""What the API and the device page show of a device's endpoint: never a credential."""

from __future__ import annotations

import pytest

from app.api.routes.devices import public_endpoint


@pytest.mark.parametrize(("endpoint", "shown"), [
    ("opc.tcp://127.0.0.1:4840", "opc.tcp://127.0.0.1:4840"),
    ("opc.tcp://operator:s3cret@10.0.0.2:4840/UA/Incubator", "opc.tcp://10.0.0.2:4840/UA/Incubator"),
    ("opc.tcp://10.0.0.2:4840/UA?token=abc#x", "opc.tcp://10.0.0.2:4840/UA"),
    ("127.0.0.1:5020", "127.0.0.1:5020"),
])
def test_the_endpoint_is_shown_without_user_password_query_or_fragment(endpoint: str, shown: str) -> None:
    assert public_endpoint(endpoint) == shown
