"""Real servers for the notification channels, for any test that needs them (channels, API, end to end).

- `tls_files(dir)`: a CA and a server certificate for 127.0.0.1 / localhost it signs (made here, nothing shipped).
- `SMTPServer(security=..., tls=..., login=(user, password))`: aiosmtpd on 127.0.0.1 in its own thread, plain,
  STARTTLS (required) or implicit TLS, with AUTH when `login` is given; it keeps every message it accepted
  (`messages`) and refuses the addresses in `refuse` with 550. `settings()` gives the CULTURECTL_SMTP_* values
  (as Settings keyword arguments) that reach it.
- `WebhookReceiver()`: an HTTP server on 127.0.0.1 in threads, keeping every request (`requests`); it answers
  `status` (default 200) or, with `hang = True`, holds each request until the receiver closes (a timeout).

Both are context managers and work from synchronous and asynchronous tests alike; `wait(n, timeout)` blocks until n
messages/requests arrived, `await arrived(n, timeout)` does the same without blocking the event loop. Use:

    with SMTPServer() as smtp, WebhookReceiver() as hooks:
        settings = Settings(..., **smtp.settings(), webhook_secret=SecretStr("s"), sms_url=hooks.url("/sms"))
        ...
        [message] = await smtp.arrived(1, timeout=5)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import free_port

HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path  # what a client trusts (CULTURECTL_SMTP_CA_FILE)
    cert_file: Path  # the server's certificate, signed by the CA
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, valid for a day, in `directory`."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"culturectl test CA {uuid.uuid4().hex[:8]}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return files


# --------------------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------------------


class _Inbox:
    """A list that threads append to and tests wait on (with a deadline)."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def wait(self, n: int, timeout: float) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) >= n, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {n} items; got {len(self._items)}")
            return list(self._items)


# --------------------------------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool  # the message came over TLS (STARTTLS or implicit)
    login: str | None  # the AUTH user, when the client logged in

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        return str(body.get_content())


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.server.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        data = envelope.original_content or b""
        tls = session.ssl is not None or self.server.security == "tls"  # implicit TLS: the whole connection
        self.server.inbox.add(ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), data, tls, login))
        return f"250 2.0.0 OK queued as {uuid.uuid4().hex[:10]}"


class _Controller(Controller):
    def factory(self) -> SMTP:
        with warnings.catch_warnings():  # "AUTH without requiring TLS": implicit TLS is TLS, aiosmtpd cannot tell
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(self.handler, **self.SMTP_kwargs)


class SMTPServer:
    """aiosmtpd on 127.0.0.1: see the module docstring."""

    def __init__(self, security: Literal["none", "starttls", "tls"] = "none", *, tls: TLSFiles | None = None,
                 login: tuple[str, str] | None = None) -> None:
        if security != "none" and tls is None:
            raise ValueError("STARTTLS and TLS need the certificate files (tls_files(dir))")
        self.security, self.tls, self.login = security, tls, login
        self.host, self.port = HOST, free_port()
        self.refuse: set[str] = set()
        self.inbox = _Inbox()
        kwargs: dict[str, Any] = {}
        if login is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          # implicit TLS: aiosmtpd cannot see the TLS it is wrapped in (it is TLS all the same)
                          auth_require_tls=security == "starttls")
        if security == "starttls":
            assert tls is not None
            kwargs.update(tls_context=tls.server_context(), require_starttls=True)
        elif security == "tls":
            assert tls is not None
            kwargs.update(ssl_context=tls.server_context())
        self._controller = _Controller(_Handler(self), hostname=self.host, port=self.port, ready_timeout=10,
                                       **kwargs)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self.login is not None
        ok = isinstance(auth_data, LoginPassword) and \
            (auth_data.login.decode(), auth_data.password.decode()) == self.login
        # handled=False: aiosmtpd answers 535 itself on a failure
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    @property
    def messages(self) -> list[ReceivedMail]:
        return self.inbox.snapshot()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMail]:
        return self.inbox.wait(n, timeout)

    async def arrived(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMail]:
        return await asyncio.to_thread(self.inbox.wait, n, timeout)

    def settings(self) -> dict[str, Any]:
        """Settings keyword arguments (smtp_*) that reach this server, its login included."""
        from pydantic import SecretStr

        out: dict[str, Any] = {"smtp_host": self.host, "smtp_port": self.port, "smtp_security": self.security,
                               "smtp_timeout": 5.0, "smtp_from": "culturectl@site.example"}
        if self.tls is not None:
            out["smtp_ca_file"] = self.tls.ca_file
        if self.login is not None:
            out["smtp_username"], out["smtp_password"] = self.login[0], SecretStr(self.login[1])
        return out

    def __enter__(self) -> SMTPServer:
        self._controller.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._controller.stop()


# --------------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps what it receives: see the module docstring."""

    def __init__(self) -> None:
        self.status = 200
        self.answer = b'{"status":"success"}'
        self.hang = False
        self.inbox = _Inbox()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.inbox.add(ReceivedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                                   body))
                if receiver.hang:
                    receiver._release.wait(30)
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="webhook-receiver")

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self.inbox.snapshot()

    def wait(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedRequest]:
        return self.inbox.wait(n, timeout)

    async def arrived(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedRequest]:
        return await asyncio.to_thread(self.inbox.wait, n, timeout)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
