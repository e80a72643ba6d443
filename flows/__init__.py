"""Prefect flows: thin orchestration over ``clipmemcap``.

Set before Prefect is first imported (it reads its settings then): a run without
``PREFECT_API_URL`` starts a temporary Prefect server, which on a busy 2-core machine can take
longer than Prefect's default 20 s to answer, and the run then fails before any work.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
