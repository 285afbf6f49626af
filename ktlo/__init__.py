"""ktlo: operations runbooks (monitoring, backup, patching, failover, DR) as Prefect flows."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout ktlo runs from: workers run flows from it, the demo finds its runbooks in it.
PROJECT_DIR = Path(__file__).resolve().parent.parent
