"""`python -m simulators [incubator|culture-system|all] --scale --seed --incubator-port --culture-port --fault`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import cast

from app.core.clock import ScaledClock
from simulators.faults import FaultRequest, parse_fault_spec
from simulators.runner import Which, run_simulators


def _fault(text: str) -> FaultRequest:
    try:
        return parse_fault_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators", description="Run the hardware simulators.")
    p.add_argument("which", nargs="?", default="all", choices=["incubator", "culture-system", "all"])
    p.add_argument("--scale", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--incubator-port", type=int, default=4840)
    p.add_argument("--culture-port", type=int, default=5020)
    p.add_argument("--fault", type=_fault, action="append", default=[],
                   help="inject [simulator:]fault[:point] at start (repeatable)")
    p.add_argument("--control-port", type=int, default=None, help="serve the fault control interface on 127.0.0.1")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await run_simulators(
        cast(Which, args.which),
        ScaledClock(scale=args.scale),
        host=args.host,
        incubator_port=args.incubator_port,
        culture_port=args.culture_port,
        seed=args.seed,
        stop=stop,
        faults=args.fault,
        control_port=args.control_port,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(parse_args(argv)))


if __name__ == "__main__":
    main()
