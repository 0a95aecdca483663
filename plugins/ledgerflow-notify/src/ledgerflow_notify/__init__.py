"""ledgerflow-notify: the ``webhook`` and ``email`` notifiers for ``ledgerflow.notify``.

Installed, the distribution's entry point registers both with every engine (plugin
``notify``). A step picks one with ``notifier: webhook`` or ``notifier: email`` and gives its
settings as ``options``; secrets and server settings come from the worker's environment, never
from ``options``, which are recorded in the ledger. Receivers of webhooks check the signature
with :func:`verify_signature`.
"""

from __future__ import annotations

from ledgerflow_notify.errors import DeliveryError, NotifierConfigurationError
from ledgerflow_notify.signing import SIGNATURE_HEADER, signature_header, verify_signature
from ledgerflow_notify.smtp import EmailNotifier, message_id_for
from ledgerflow_notify.webhook import WebhookNotifier

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryError",
    "EmailNotifier",
    "NotifierConfigurationError",
    "WebhookNotifier",
    "message_id_for",
    "signature_header",
    "verify_signature",
]
