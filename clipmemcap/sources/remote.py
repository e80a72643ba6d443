"""The ``sources`` stage, first in every DAG: each data source that lives on the internet (the
ActivityNet annotations, the COCO captions) is asked whether it answers, before anything is built.

Offline, the real experiment (``presets/activitynet.yaml``) then stops here with one line that
says what could not be reached and how to run offline, instead of DVC's own "dependency ... does
not exist". What each server says of its file (ETag, size, date) is written to
``<root>/sources.json``, which the data flows' stages depend on: a changed file upstream re-runs
them. Local sources (the benchmark's) are DVC dependencies of those stages already; they are
listed as such.

    python -m clipmemcap.sources.remote
"""

from __future__ import annotations

import json

from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import Config, run_command, settings_parser
from clipmemcap.core.layout import Layout
from clipmemcap.core.redact import redact_url
from clipmemcap.sources.http import DownloadError, is_local, probe


def offline(setting: str) -> str:
    """How to run without the source that ``setting`` names."""
    return (f"offline, set {setting} to a local copy of the file, or run the long-range benchmark (the committed "
            "params.yaml: `git checkout params.yaml`)")


def remote_sources(cfg: Config) -> dict[str, str]:
    """The settings that name a source file, by setting name."""
    return {"activitynet.annotations_url": cfg.activitynet.annotations_url, "coco.captions_url": cfg.coco.captions_url}


def check_sources(cfg: Config) -> dict[str, dict]:
    """What each source's server says of it (see the module docstring); a source that does not
    answer is an error naming it and saying how to run offline."""
    record = {}
    for setting, url in remote_sources(cfg).items():
        if is_local(url):
            record[setting] = {"local": url}
            continue
        try:
            record[setting] = {"url": redact_url(url), **probe(url, cfg.activitynet.download.socket_timeout_s)}
        except DownloadError as err:
            raise type(err)(f"cannot reach {setting}: {err}; {offline(setting)}") from None
    return record


def main(argv: list[str] | None = None) -> None:
    def work(args, cfg) -> None:
        record = check_sources(cfg)
        write_json(Layout.of(cfg).sources, record)
        print(json.dumps(record, indent=2))

    run_command(settings_parser(__doc__, prog="python -m clipmemcap.sources.remote"), work, argv)


if __name__ == "__main__":
    main()
