"""`send_action`: one try of one action, the single entry point of every sender.

Used by the dispatcher (for deliveries) and by `engine actions test` (for a sample event),
so a test request goes through exactly the code a real one does. Senders work on the rule's
action models; the JSON stored with a delivery becomes one here (`stored_action`). It never
raises for a delivery problem: a stored action that is not valid, a missing secret, a
refused address or a bug in a sender all become an `Attempt` with an error, already
scrubbed of every secret value.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from engine import clock
from engine.actions import discord, pagerduty, slack, smtp, teams, webhook
from engine.actions import secrets as secretsmod
from engine.actions.http import Attempt
from engine.exceptions import DeliveryError, PermanentDeliveryError
from engine.rules.actions import ActionModel, stored_action
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The sender of each action type: send(delivery_id, action, ctx, secrets, settings) -> Attempt.
SENDERS: dict[str, Callable[..., Attempt]] = {
    "webhook": webhook.send,
    "slack": slack.send,
    "email": smtp.send,
    "discord": discord.send,
    "teams": teams.send,
    "pagerduty": pagerduty.send,
}


@lru_cache(maxsize=256)
def _stored(text: str) -> ActionModel:
    """The model of a stored action, by its JSON text: the deliveries of one automation carry
    the same action, and validating it is a large part of an attempt's own work. Senders only
    read the model."""
    return stored_action(json.loads(text))


def send_action(
    delivery_id: str,
    action: ActionModel | Mapping[str, Any],
    ctx: Mapping[str, str],
    settings: Settings | None = None,
    *,
    text: str | None = None,
) -> Attempt:
    """Send `action` (a model, or the JSON stored with a delivery) once for the event
    described by `ctx`; the outcome as an Attempt. `text`: the stored action's JSON text, when
    the caller read it too (the dispatcher): the key of its model, instead of dumping it again."""
    settings = settings or get_settings()
    started_at, t0 = clock.now(), time.monotonic()
    resolved = secretsmod.Secrets()
    if isinstance(action, Mapping):
        action_type, url = action.get("type"), action.get("url")
    else:
        action_type, url = action.type, getattr(action, "url", None)
    request: dict[str, Any] = {"url": url} if action_type in ("webhook", "pagerduty") and url else {}
    try:
        if isinstance(action, Mapping):
            try:
                action = _stored(text if text is not None else json.dumps(action, sort_keys=True))
            except ValueError as exc:
                raise PermanentDeliveryError(str(exc)) from None
        resolved = secretsmod.resolve(action, settings)
        sender = SENDERS.get(action.type)
        if sender is None:
            raise PermanentDeliveryError(f"action type {action_type!r} sends nothing")
        attempt = sender(delivery_id, action, ctx, resolved, settings)
    except PermanentDeliveryError as exc:
        attempt = Attempt(request, error=str(exc), retryable=False)
    except DeliveryError as exc:
        attempt = Attempt(request, error=str(exc), retryable=True)
    except Exception as exc:  # a bug in a sender must not stop the dispatcher; retry, then fail
        # The frames, and the message scrubbed: an exception's text may quote a secret.
        log.error(
            "delivery %s: unexpected error in the %s sender: %s: %s\n%s",
            delivery_id,
            action_type,
            type(exc).__name__,
            resolved.scrub(str(exc)),
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        attempt = Attempt(request, error=f"internal error: {type(exc).__name__}: {exc}", retryable=True)
    return attempt.with_(
        request=resolved.scrub_json(attempt.request),
        response_body=resolved.scrub(attempt.response_body),
        error=resolved.scrub(attempt.error),
        started_at=started_at,
        duration_ms=round((time.monotonic() - t0) * 1000, 3),
    )
