"""Why a rule fired: the data behind one trigger, in words, in the terminal and as a PNG.

* `data`: `explain_data(conn, trigger_id)` reads an `Explanation` (pydantic, JSON-ready);
* `text`: the explanation in words (`lines(expl)`) and the labels the pictures share;
* `terminal`: `render_terminal()` (plotext) draws the series, the window(s), the threshold
  or the aggregates, and the value that fired, with the words under it;
* `png`: `render_png()` draws the same picture with matplotlib (imported only there).

    with connect() as conn:
        expl = explain_data(conn, 12)
    print(render_terminal(expl, width=100))
    render_png(expl, "why.png")
"""

from engine.explain.data import Explanation, Point, Window, explain_data
from engine.explain.png import render_png
from engine.explain.terminal import render_terminal
from engine.explain.text import lines

__all__ = ["Explanation", "Point", "Window", "explain_data", "lines", "render_png", "render_terminal"]
