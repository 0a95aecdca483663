"""The plugin ``notify`` (entry point ``ledgerflow_notify.plugin`` in the group ``ledgerflow``):
registers the ``webhook`` and ``email`` notifiers with every engine."""

from __future__ import annotations

from ledgerflow.hookspecs import hookimpl
from ledgerflow.notifiers import Notifier

from ledgerflow_notify.smtp import EmailNotifier
from ledgerflow_notify.webhook import WebhookNotifier

__all__ = ["ledgerflow_register_notifiers"]


@hookimpl
def ledgerflow_register_notifiers(notifiers: dict[str, Notifier]) -> None:
    """``webhook`` (:class:`~ledgerflow_notify.WebhookNotifier`) and ``email``
    (:class:`~ledgerflow_notify.EmailNotifier`); both read their settings from the environment
    at each send, not here."""
    notifiers["webhook"] = WebhookNotifier()
    notifiers["email"] = EmailNotifier()
