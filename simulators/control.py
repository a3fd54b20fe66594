"""A small HTTP interface on 127.0.0.1 to inject and clear simulator faults while the simulators run.

GET /faults lists the active faults per simulator, POST /faults {"simulator", "fault", "point"} injects one,
DELETE /faults/{simulator}/{fault}?point= clears it. Bad input gets 400 with a problem JSON naming the faults
the simulator supports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Mapping
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from simulators.faults import SUPPORTED, Fault, parse_fault_spec

log = logging.getLogger("culturectl.simulators")

PROBLEM_JSON = "application/problem+json"


class FaultTarget(Protocol):
    async def inject(self, fault: Fault | str, *, point: str | None = None) -> None: ...

    async def clear(self, fault: Fault | str, *, point: str | None = None) -> None: ...

    def active_faults(self) -> list[dict[str, Any]]: ...


def _problem(status: int, detail: str, rule: str) -> JSONResponse:
    title = {400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "rule": rule}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _supported(name: str) -> str:
    return f"the {name} simulator supports: {', '.join(SUPPORTED[name])}"


def control_app(sims: Mapping[str, FaultTarget]) -> FastAPI:
    """The control interface over the running simulators, keyed "incubator" / "culture-system"."""
    app = FastAPI(title="culturectl simulator fault control", openapi_url=None, docs_url=None, redoc_url=None)

    def listing() -> dict[str, Any]:
        return {name: sim.active_faults() for name, sim in sims.items()}

    def unknown_simulator(name: str) -> JSONResponse:
        return _problem(404 if name in SUPPORTED else 400,
                        f"simulator {name!r} is not running here; running: {', '.join(sims) or 'none'}",
                        "simulator-running")

    @app.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return listing()

    @app.post("/faults")
    async def inject(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("fault"), str):
            return _problem(400, 'expected JSON {"simulator": ..., "fault": ..., "point": ...}; faults: '
                            + ", ".join(Fault), "fault-request")
        simulator, point = body.get("simulator"), body.get("point")
        if simulator is not None and (not isinstance(simulator, str) or simulator not in SUPPORTED):
            return _problem(400, f"unknown simulator {simulator!r}; choose {' or '.join(SUPPORTED)}", "simulator")
        if point is not None and not isinstance(point, str):
            return _problem(400, "point must be a string", "fault-request")
        spec = ":".join(p for p in (simulator, body["fault"], point) if p)
        try:
            req = parse_fault_spec(spec)
        except ValueError as exc:
            return _problem(400, str(exc), "fault-supported")
        sim = sims.get(req.simulator)
        if sim is None:
            return unknown_simulator(req.simulator)
        try:
            await sim.inject(req.fault, point=req.point)
        except ValueError as exc:
            return _problem(400, f"{exc}; {_supported(req.simulator)}", "fault-supported")
        return JSONResponse(listing(), status_code=201)

    @app.delete("/faults/{simulator}/{fault}")
    async def clear(simulator: str, fault: str, point: str | None = None) -> Any:
        if simulator not in SUPPORTED:
            return _problem(400, f"unknown simulator {simulator!r}; choose {' or '.join(SUPPORTED)}", "simulator")
        sim = sims.get(simulator)
        if sim is None:
            return unknown_simulator(simulator)
        try:
            await sim.clear(fault, point=point)
        except ValueError as exc:
            return _problem(400, f"{exc}; {_supported(simulator)}", "fault-supported")
        return listing()

    return app


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process running the simulators owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ControlServer:
    """Serves `control_app` on 127.0.0.1:`port` (0: a free port) in the running event loop."""

    def __init__(self, sims: Mapping[str, FaultTarget], port: int = 0) -> None:
        self.sims = sims
        self._requested_port = port
        self.port = port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._requested_port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(control_app(self.sims), log_level="warning", lifespan="off")
        server = _QuietServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fault-control-{self.port}")
        # bounded: uvicorn starts in milliseconds on a bound socket
        for _ in range(200):
            if server.started or self._task.done():
                break
            await asyncio.sleep(0.025)
        if not server.started:
            await self.stop()
            raise OSError(f"fault control interface did not start on 127.0.0.1:{self.port}")
        log.info("fault control interface on %s", self.url)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server, self._task = None, None
        if server is not None:
            server.should_exit = True
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout=5)
            except TimeoutError:
                task.cancel()
            except Exception:
                log.exception("fault control interface failed")
