"""The web console of `engine web`: server-rendered pages at `/` (pages.py), signed in with an
API key (session.py), its pictures inline SVG (charts.py). `create_console(settings)` is the
ASGI app engine.web.app mounts under everything the API serves."""

from engine.web.console.pages import create_console

__all__ = ["create_console"]
