"""The HTTP client of the CLI: `engine web`'s /api/v1 routes the everyday commands use.

`Client.from_settings()` reads ENGINE_URL and ENGINE_API_KEY. Each method is one request
and returns the JSON the route answers; engine/cli/backend.py turns it into the same
Python values the database gives, so a command prints the same either way.

A refusal is one line naming its cause: 401 (the key is refused), 403 (the key's role or
scope lacks what the request needs), 404 (no such thing), 422 (the field that is wrong),
or the URL that cannot be reached. The key itself is never part of a message.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from engine import __version__
from engine.exceptions import (
    ApiError,
    KeyRefused,
    NotFound,
    RuleIssue,
    RuleValidationError,
)
from engine.settings import API_PREFIX, Settings, api_endpoint, get_settings

TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # a backtest over a long history takes a while


class Client:
    def __init__(self, url: str, api_key: str, *, timeout: httpx.Timeout = TIMEOUT):
        self.url = url.rstrip("/").removesuffix(API_PREFIX)  # the server's base URL, as the user gave it
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"engine-cli/{__version__}"},
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        return cls(*api_endpoint(settings or get_settings()))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- automations ---------------------------------------------------------------------
    def automations(self) -> list[dict[str, Any]]:
        return self._call("GET", "/automations")

    def automation(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/automations/{_segment(name)}")

    def validate(self, text: str, file: str) -> list[RuleIssue]:
        """The issues the server finds in one file's text (none: it is valid)."""
        answer = self._call("POST", "/automations/validate", json={"yaml": text, "file": file})
        return [RuleIssue(file, e.get("line"), e.get("field") or "", e["message"]) for e in answer["errors"]]

    def apply(self, texts: dict[str, str], *, prune: bool, dry_run: bool) -> list[tuple[str, str]]:
        """Apply the rule files `{file name: text}` together; (name, outcome) for each."""
        files = [{"yaml": text, "file": file} for file, text in texts.items()]
        first = files[0] if files else {"yaml": "", "file": "<none>"}
        body = first | {"files": files[1:], "prune": prune, "dry_run": dry_run}
        return [(row["name"], row["outcome"]) for row in self._call("POST", "/automations/apply", json=body)]

    def set_enabled(self, name: str, enabled: bool) -> bool:
        action = "enable" if enabled else "disable"
        return bool(self._call("POST", f"/automations/{_segment(name)}/{action}")["changed"])

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/automations/{_segment(name)}")

    def backtest(self, text: str, file: str, since: str) -> list[dict[str, Any]]:
        return self._call("POST", "/automations/backtest", json={"yaml": text, "file": file, "since": since})

    # -- history, deliveries, explanations ---------------------------------------------------
    def history(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._call("GET", "/history", params=_present(params))

    def deliveries(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._call("GET", "/deliveries", params=_present(params))

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        return self._call("POST", f"/deliveries/{_segment(delivery_id)}/redeliver")

    def explanation(self, trigger_id: int) -> dict[str, Any]:
        return self._call("GET", f"/triggers/{trigger_id}/explain")

    # -- one request -----------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(f"engine web at {self.url} (ENGINE_URL) did not answer in time") from None
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach engine web at {self.url} (ENGINE_URL): {_reason(exc)}") from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise ApiError(
                    f"{self.url} (ENGINE_URL) answered {method} {path} with something that is not JSON: "
                    "is it engine web?",
                    response.status_code,
                ) from None
        raise self._error(response)

    def _error(self, response: httpx.Response) -> Exception:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        errors = body.get("errors") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail:
            detail = response.reason_phrase or "no reason given"
        if status == 401:
            return KeyRefused(f"ENGINE_API_KEY is refused by {self.url}: {detail}")
        if status == 403:
            return KeyRefused(f"refused by {self.url}: {detail}")
        if status == 404:
            if body is None:  # not engine web's answer: a wrong URL (a path, a proxy)
                return ApiError(
                    f"{self.url} (ENGINE_URL) has no {response.request.url.path}: is it engine web?", 404
                )
            return NotFound(detail)
        if status == 422 and isinstance(errors, list) and errors and all("line" in e for e in errors):
            return RuleValidationError(
                [
                    RuleIssue(e.get("file") or "<request>", e.get("line"), e.get("field") or "", e["message"])
                    for e in errors
                ]
            )
        if status in (413, 422):  # the detail names the field (422) or the limit (413)
            return ApiError(f"refused by {self.url}: {detail}", status)
        return ApiError(f"engine web at {self.url} answered {status}: {detail}", status)


def _segment(text: str) -> str:
    return quote(text, safe="")


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused (is `engine web` running there?)"
    return text.splitlines()[0]
