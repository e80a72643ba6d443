"""What every data flow shares: its command line, and how it runs its download tasks."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path

from prefect import Task

from clipmemcap.core.config import DownloadConfig, ImageDownloadConfig, settings_parser
from clipmemcap.core.errors import INPUT_ERRORS, reported
from clipmemcap.sources.http import RunStoppingError


def with_retries(task: Task, cfg: DownloadConfig | ImageDownloadConfig, deadline_s: float | None = None) -> Task:
    """``task`` retried ``cfg.retries`` times with doubling back-off (first delay, 2 x, 4 x, ...,
    each with random jitter, so that concurrent downloads do not retry in lockstep), each try
    ended after ``deadline_s``: a server that sends a byte a second never trips a socket timeout."""
    return task.with_options(retries=cfg.retries, retry_jitter_factor=0.5, timeout_seconds=deadline_s,
                             retry_delay_seconds=[cfg.retry_delay_s * 2**i for i in range(cfg.retries)],
                             retry_condition_fn=_worth_retrying)


def _worth_retrying(task, task_run, state) -> bool:
    """Not an error that every download meets (a full disk, a 403, a bot check): retrying it
    only delays the stop."""
    try:
        state.result()
    except RunStoppingError:
        return False
    except Exception:
        return True
    return True


def command_line(flow: Callable, doc: str, argv: list[str] | None = None) -> dict:
    """``python -m flows.<name> [--params FILE] [--set KEY=VALUE ...]``: run ``flow`` once."""
    parser = settings_parser(doc, prog=f"python -m flows.{Path(inspect.getfile(flow.fn)).stem}")
    args = parser.parse_args(argv)
    # The temporary Prefect server a run starts would otherwise try to send usage telemetry and log
    # a stack trace wherever there is no internet.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.getLogger("prefect").addFilter(_TemporaryServerNotice())
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_input_error_without_traceback)
    with reported(parser.prog):
        return flow(params=args.params, overrides=args.overrides)


def _input_error_without_traceback(record: logging.LogRecord) -> bool:
    """Prefect logs a failed task's or flow's exception with its traceback; for bad input (a
    source that does not answer, a malformed file) the message is the whole story."""
    if record.exc_info and isinstance(record.exc_info[1], INPUT_ERRORS):
        record.exc_info = record.exc_text = None
    return True


class _TemporaryServerNotice(logging.Filter):
    """Without PREFECT_API_URL every run starts and stops a temporary Prefect server and says so,
    with a link, at INFO: nothing to act on in a `dvc repro` (README "Deployments" for a server)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Starting temporary server", "Stopping temporary server"))
