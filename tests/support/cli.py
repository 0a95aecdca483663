"""The ``ledgerflow`` command as a user runs it: a real subprocess on a given database, with the
InvoiceApproval example's app module (``invoice_app``) importable for ``--app``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contrib" / "examples" / "invoice_approval" / "invoice_approval.yaml"
# the example's app module, invoice_app, creates the tables its steps write: workers need it
APP = ("--app", "invoice_app")
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(EXAMPLE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    ),
}


class Cli:
    """``ledgerflow --db DB …`` in a subprocess; with ``check``, a non-zero exit fails."""

    def __init__(self, db: str) -> None:
        self.db = db

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "ledgerflow", "--db", self.db, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=ENV,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> Any:
        """The command's ``--json`` output, parsed."""
        return json.loads(self(*args, "--json").stdout)
