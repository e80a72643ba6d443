"""What every data flow shares: its command line, and how it runs its download tasks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


def retry_delays(retries: int, first_delay_s: float) -> list[float]:
    """Doubling back-off: first, 2 x first, 4 x first, ..."""
    return [first_delay_s * 2**i for i in range(retries)]


def command_line(flow: Callable, doc: str, argv: list[str] | None = None) -> dict:
    """``python -m flows.<name> [--params FILE] [--set KEY=VALUE ...]``: run ``flow`` once."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting for this run, e.g. clip.batch_size=32 (repeatable)")
    args = parser.parse_args(argv)
    # The temporary Prefect server a run starts would otherwise try to send usage telemetry and log
    # a stack trace wherever there is no internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return flow(params=args.params, overrides=args.overrides)
