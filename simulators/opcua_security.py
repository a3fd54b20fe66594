"""What the OPC UA simulators share: secured endpoints, as a plant's server would offer them (a server certificate,
Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with Sign and SignAndEncrypt, user names with
passwords, and a list of the client certificates it trusts; any other client is refused at CreateSession), and a
shutdown that ends every client session as a device's power-off would."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua_security import thumbprint

SECURED = [
    ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign, ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign, ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


@dataclass
class ServerSecurity:
    """How a simulator secures its endpoint. `trusted_clients`: client certificate thumbprints it accepts (None:
    any); `users`: user name -> password (empty: anonymous); `allow_none`: also offer SecurityPolicy None."""

    pki_dir: Path
    users: dict[str, str] = field(default_factory=dict)
    trusted_clients: set[str] | None = None
    allow_none: bool = False
    policies: list[ua.SecurityPolicyType] = field(default_factory=lambda: list(SECURED))

    @property
    def cert_file(self) -> Path:
        return self.pki_dir / "server-cert.der"

    def certificate(self) -> bytes:
        return self.cert_file.read_bytes()


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if not self._users:
            return User(role=UserRole.User)
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


async def secure_server(server: Server, security: ServerSecurity | None) -> None:
    """Set the server's policies, identity tokens and certificates (before server.start())."""
    if security is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        return
    security.pki_dir.mkdir(parents=True, exist_ok=True)
    key = security.pki_dir / "server-key.pem"
    await setup_self_signed_certificate(key, security.cert_file, server.get_application_uri(), socket.gethostname(),
                                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"commonName": "culturectl simulator"})
    await server.load_certificate(str(security.cert_file))
    await server.load_private_key(str(key))
    server.set_security_policy(security.policies + ([ua.SecurityPolicyType.NoSecurity] if security.allow_none else []))
    server.set_identity_tokens([ua.UserNameIdentityToken] if security.users else [ua.AnonymousIdentityToken])
    server.iserver.user_manager = _Users(security.users)
    trusted = security.trusted_clients

    async def validate(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if trusted is not None and thumbprint(cert.public_bytes(Encoding.DER)) not in trusted:
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    server.set_certificate_validator(validate)


async def stop_server(server: Server) -> None:
    """Stop `server`. asyncua's stop() leaves the sessions of still-connected clients running (their timeout and
    subscription loops); close them first, as a real device's power-off would."""
    for session in list(server.iserver._external_sessions.values()):
        with contextlib.suppress(Exception):
            await session.close_session(delete_subs=True)
    await server.stop()


async def new_server(endpoint: str, name: str, security: ServerSecurity | None) -> Server:
    """An initialised server listening (once started) on `endpoint`, secured as `security` says (None: anonymous
    only, SecurityPolicy None, so no user name travels unprotected), remote administration off."""
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name(name)
    await secure_server(server, security)
    server.allow_remote_admin(False)
    return server
