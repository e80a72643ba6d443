"""Serve every data flow as a deployment of a Prefect server.

    prefect server start --host 127.0.0.1 --no-ui          # once, in its own terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                  # serves until Ctrl-C
    prefect deployment run 'activitynet-ingest/default' --param params=params.yaml --watch

Runs start in this process's working directory, so relative settings paths (``params.yaml``,
``storage/``) mean the same as on the command line. ``prefect deployment run`` exits non-zero
when a run fails.
"""

from __future__ import annotations

import argparse
import os

from prefect import serve

from flows.activitynet import activitynet_ingest
from flows.coco import coco_ingest

DEPLOYMENT = "default"
FLOWS = (activitynet_ingest, coco_ingest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=1,
                        help="flow runs at once (default 1: ingest runs take the storage lock anyway)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    serve(*(flow.to_deployment(name=DEPLOYMENT, description=flow.description) for flow in FLOWS), limit=args.limit)


if __name__ == "__main__":
    main()
