"""``python -m ledgerflow`` runs the ``ledgerflow`` command."""

from ledgerflow.cli import main

main()
