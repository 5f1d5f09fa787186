"""The dashboard page: ``static/index.html`` with its config, linking its scripts (live server)
or with every script, style and the data inlined (a report that opens anywhere, offline)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

STATIC = Path(__file__).parent / "static"
DEFAULT_SMOOTHING = 0.6


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js as shipped inside the plotly Python package: no CDN, ever."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _json_for_script(value: Any) -> str:
    # "</" inside a <script> element would end it early; "<\/" is the same JSON string.
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode().replace("</", "<\\/")


def _replace_once(html: str, old: str, new: str) -> str:
    assert html.count(old) == 1, f"static/index.html must contain {old!r} once"
    return html.replace(old, new)


def page_html(*, poll_ms: int = 2000, smoothing: float = DEFAULT_SMOOTHING,
              payload: dict[str, Any] | None = None, generated: float | None = None) -> str:
    """The live page (``payload`` None: it fetches ``api/data``) or a self-contained report."""
    html = (STATIC / "index.html").read_text()
    config = {"poll_ms": poll_ms, "smoothing": smoothing, "payload": payload, "generated": generated}
    html = _replace_once(html, "__CONFIG__", _json_for_script(config))
    if payload is None:
        return html
    inline_script = lambda text: "<script>" + text.replace("</script", "<\\/script") + "</script>"  # noqa: E731
    html = _replace_once(html, '<link rel="stylesheet" href="static/app.css">',
                         "<style>" + (STATIC / "app.css").read_text() + "</style>")
    html = _replace_once(html, '<script src="static/plotly.min.js"></script>', inline_script(plotly_js()))
    return _replace_once(html, '<script src="static/app.js"></script>', inline_script((STATIC / "app.js").read_text()))
