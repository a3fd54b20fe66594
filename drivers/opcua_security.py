"""Secure OPC UA: culturectl's application instance certificate, the trust list of server certificates, and a
client set up for a signed (and encrypted) session with user name and password.

Files (under the data directory; `culturectl certs` manages them):

    pki/own/cert.der      culturectl's certificate (created on first use, valid one year)
    pki/own/key.pem       its private key (mode 0600)
    pki/trusted/<T>.der   server certificates culturectl trusts, by SHA-1 thumbprint T (hex, as OPC UA shows it)
    pki/rejected/<T>.der  server certificates that were refused, kept so `certs trust T` can trust them

A server certificate that is not in the trust list is refused (and kept in rejected/) with an error naming its
thumbprint and the command that trusts it. A configured security policy is never replaced by None: when the
server offers no endpoint with the policy and mode asked for, the connection is refused.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from asyncua import ua
from asyncua.client.client import Client, _first_cert_from_chain
from asyncua.crypto import security_policies
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.base import DeviceProtocolError
from drivers.devices import OpcUaSecurity

APPLICATION_URI: Final = "urn:culturectl:client"
POLICIES: Final[dict[str, type[security_policies.SecurityPolicy]]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES: Final = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


def thumbprint(der: bytes) -> str:
    """A certificate's SHA-1 thumbprint in upper-case hex (what OPC UA tools show)."""
    return hashlib.sha1(der).hexdigest().upper()


def subject(der: bytes) -> str:
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return "(not a certificate)"


@dataclass(frozen=True)
class Pki:
    """The certificate store in `root` (data_dir/pki)."""

    root: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Pki:
        return cls(Path(data_dir) / "pki")

    @property
    def cert_file(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key_file(self) -> Path:
        return self.root / "own" / "key.pem"

    async def own(self) -> tuple[Path, Path]:
        """culturectl's certificate and key, created on first use (the key readable by its owner only)."""
        self.cert_file.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cert_file.parent, 0o700)
        old = os.umask(0o077)
        try:
            await setup_self_signed_certificate(
                self.key_file, self.cert_file, APPLICATION_URI, socket.gethostname(),
                [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "culturectl", "organizationName": "culturectl"})
        finally:
            os.umask(old)
        os.chmod(self.key_file, 0o600)
        return self.cert_file, self.key_file

    def _dir(self, which: str) -> Path:
        d = self.root / which
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_trusted(self, der: bytes) -> bool:
        return (self._dir("trusted") / f"{thumbprint(der)}.der").is_file()

    def reject(self, der: bytes) -> str:
        t = thumbprint(der)
        (self._dir("rejected") / f"{t}.der").write_bytes(der)
        return t

    def trust(self, thumb_or_file: str) -> str:
        """Trust a rejected certificate by thumbprint, or a certificate file (DER or PEM); returns the thumbprint."""
        path = Path(thumb_or_file)
        if path.is_file():
            data = path.read_bytes()
            der = data if not data.lstrip().startswith(b"-----BEGIN") else x509.load_pem_x509_certificate(
                data).public_bytes(encoding=Encoding.DER)
        else:
            t = thumb_or_file.upper().replace(":", "")
            src = self._dir("rejected") / f"{t}.der"
            if not src.is_file():
                known = ", ".join(p.stem for p in self._dir("rejected").glob("*.der")) or "none"
                raise ValueError(f"no rejected certificate with thumbprint {t}; rejected: {known}")
            der = src.read_bytes()
            src.unlink()
        t = thumbprint(der)
        (self._dir("trusted") / f"{t}.der").write_bytes(der)
        return t

    def untrust(self, thumb: str) -> str:
        """Move a trusted certificate to rejected (`certs reject`)."""
        t = thumb.upper().replace(":", "")
        src = self._dir("trusted") / f"{t}.der"
        if not src.is_file():
            raise ValueError(f"no trusted certificate with thumbprint {t}")
        (self._dir("rejected") / f"{t}.der").write_bytes(src.read_bytes())
        src.unlink()
        return t

    def listing(self) -> dict[str, list[tuple[str, str]]]:
        return {which: [(p.stem, subject(p.read_bytes())) for p in sorted(self._dir(which).glob("*.der"))]
                for which in ("trusted", "rejected")}


def password_of(security: OpcUaSecurity) -> str:
    """The password from the environment variable or file the devices file names (never from the file itself)."""
    if security.password_env:
        value = os.environ.get(security.password_env)
        if value is None:
            raise DeviceProtocolError(f"the password variable {security.password_env} is not set")
        return value
    if security.password_file:
        try:
            return security.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise DeviceProtocolError(f"cannot read the password file {security.password_file}: "
                                      f"{type(exc).__name__}") from None
    raise DeviceProtocolError("no password configured")


async def secure(client: Client, security: OpcUaSecurity, endpoint: str, data_dir: Path | None) -> None:
    """Set up `client` as `security` says, before connect(); DeviceProtocolError says why it cannot."""
    if security.policy != "None":
        if data_dir is None:
            raise DeviceProtocolError("a secured OPC UA connection needs the data directory (for the certificate)")
        pki = Pki.in_data_dir(data_dir)
        policy = POLICIES[security.policy]
        mode = MODES[security.mode]
        endpoints = await client.connect_and_get_server_endpoints()
        chosen = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
        if not chosen:
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints})
            raise DeviceProtocolError(f"{endpoint} offers no endpoint with {security.policy}/{security.mode} "
                                      f"(offers: {', '.join(offered)}); not connecting with less")
        if security.username:
            tokens = [t for t in chosen[0].UserIdentityTokens or [] if t.TokenType == ua.UserTokenType.UserName]
            if not tokens:
                raise DeviceProtocolError(f"{endpoint} takes no user name tokens on {security.policy}/{security.mode}")
            unencrypted = all((t.SecurityPolicyUri or "").endswith("#None") for t in tokens)
            if unencrypted and mode is not ua.MessageSecurityMode.SignAndEncrypt:
                raise DeviceProtocolError(f"{endpoint} would take the password of {security.username!r} in clear text "
                                          f"(its user name token has no security policy and the mode is "
                                          f"{security.mode}); use mode SignAndEncrypt")
        der = _first_cert_from_chain(chosen[0].ServerCertificate)
        if not pki.is_trusted(der):
            t = pki.reject(der)
            raise DeviceProtocolError(f"the server certificate of {endpoint} ({subject(der)}, thumbprint {t}) is not "
                                      f"trusted; if it is the server's, trust it with: culturectl certs trust {t}")
        cert, key = await pki.own()
        client.application_uri = APPLICATION_URI
        await client.set_security(policy, str(cert), str(key), server_certificate=der, mode=mode)
    if security.username:
        if security.policy == "None":
            raise DeviceProtocolError("a user name and password are not sent over an unsecured connection; "
                                      "configure a security policy")
        client.set_user(security.username)
        client.set_password(password_of(security))


