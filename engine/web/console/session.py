"""The console's session cookie and form tokens, signed with HMAC-SHA256.

The cookie stands for an API key without holding it: `{key id, session id, expiry}` and its
signature. Every request reads the key's row again (a revoked or expired key signs the
session out at once); the cookie is HttpOnly, SameSite=Strict, Secure over https and
expires with the session.

Every form carries a token bound to the session (HMAC of the session id): a page of another
site cannot read it, so it cannot post a form that passes. The sign-in form, before any
session, is bound the same way to a random `engine_signin` cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Request, Response

from engine.settings import Settings

COOKIE = "engine_session"
SIGNIN_COOKIE = "engine_signin"
_SIGNIN_TTL = 3600  # seconds the sign-in form stays valid


@dataclass(frozen=True)
class Session:
    key_id: int
    sid: str
    expires: int  # unix seconds


def secret(settings: Settings) -> bytes:
    """The signing secret: ENGINE_WEB_SECRET (`engine web` sets one for its workers when unset)."""
    if settings.web_secret is None:
        raise RuntimeError("ENGINE_WEB_SECRET is unset")  # engine.web.app makes one first
    return settings.web_secret.get_secret_value().encode()


def _sign(key: bytes, purpose: str, payload: str) -> str:
    return hmac.new(key, f"{purpose}|{payload}".encode(), hashlib.sha256).hexdigest()


def encode(key: bytes, session: Session) -> str:
    payload = base64.urlsafe_b64encode(
        json.dumps({"k": session.key_id, "s": session.sid, "e": session.expires}).encode()
    ).decode()
    return f"{payload}.{_sign(key, 'session', payload)}"


def decode(key: bytes, value: str, now: float | None = None) -> Session | None:
    """The session a cookie holds, or None: unsigned, altered, malformed or expired."""
    payload, _, signature = value.partition(".")
    if not hmac.compare_digest(signature, _sign(key, "session", payload)):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
        found = Session(key_id=int(data["k"]), sid=str(data["s"]), expires=int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return found if found.expires > (time.time() if now is None else now) else None


def new(key_id: int, settings: Settings) -> Session:
    return Session(key_id, secrets.token_urlsafe(16), int(time.time() + settings.web_session_hours * 3600))


def read(request: Request) -> Session | None:
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    return decode(secret(request.app.state.settings), value)


def _secure(request: Request) -> bool:
    base = request.app.state.settings.base_url
    return request.url.scheme == "https" or base.startswith("https://")


def set_cookie(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        encode(secret(request.app.state.settings), session),
        max_age=max(0, session.expires - int(time.time())),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))


# -- form tokens -----------------------------------------------------------------------------
def csrf_token(request: Request, session: Session) -> str:
    return _sign(secret(request.app.state.settings), "csrf", session.sid)


def csrf_ok(request: Request, session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(request, session))


def signin_nonce(request: Request) -> str:
    """The sign-in cookie's nonce (a fresh one if the browser has none)."""
    return request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(16)


def signin_token(request: Request, nonce: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_sign(secret(request.app.state.settings), 'signin', f'{nonce}|{issued}')}"


def signin_ok(request: Request, token: str | None) -> bool:
    nonce = request.cookies.get(SIGNIN_COOKIE)
    issued, _, signature = (token or "").partition(".")
    if not nonce or not issued.isdigit() or time.time() - int(issued) > _SIGNIN_TTL:
        return False
    expected = _sign(secret(request.app.state.settings), "signin", f"{nonce}|{issued}")
    return hmac.compare_digest(signature, expected)


def set_signin_cookie(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        nonce,
        max_age=_SIGNIN_TTL,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
