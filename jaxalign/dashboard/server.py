"""The live dashboard: a Starlette app served by uvicorn on 127.0.0.1 unless told otherwise.

Routes: ``/`` the page; ``/static/*`` its script and style (Starlette's StaticFiles, which
refuses paths outside the package's static folder) and plotly.js from the plotly package;
``/api/data?have=VERSION`` the payload, or ``{"unchanged": true}`` while the runs' files have
not changed; ``/api/completions?run=I&step=N|latest|all&q=TEXT`` completion rows. Runs are named
by index: no request ever carries a file path, so nothing outside the run dirs can be served.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any, Callable

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jaxalign.dashboard.page import STATIC, page_html, plotly_js
from jaxalign.dashboard.payload import build_payload, completion_rows
from jaxalign.dashboard.runs import RunSet

MAX_COMPLETION_ROWS = 500


def _json(value: Any) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


class _PayloadCache:
    """The payload's JSON, rebuilt only when the runs' data version moves."""

    def __init__(self, runset: RunSet) -> None:
        self.runset = runset
        self._lock = threading.Lock()
        self._version: int | None = None
        self._body = b""

    def get(self) -> tuple[int, bytes]:
        version = self.runset.refresh()
        with self._lock:
            if version != self._version:
                self._body = orjson.dumps(build_payload(self.runset), option=orjson.OPT_SERIALIZE_NUMPY)
                self._version = version
            return version, self._body


def create_app(runset: RunSet, *, poll_ms: int = 2000, smoothing: float = 0.6) -> Starlette:
    cache = _PayloadCache(runset)
    page = page_html(poll_ms=poll_ms, smoothing=smoothing)

    def index(request: Request) -> Response:
        return HTMLResponse(page)

    def plotly(request: Request) -> Response:
        return Response(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    def data(request: Request) -> Response:
        version, body = cache.get()
        if request.query_params.get("have") == str(version):
            return _json({"version": version, "unchanged": True})
        return Response(body, media_type="application/json")

    def completions(request: Request) -> Response:
        params = request.query_params
        try:
            run = runset.runs[int(params.get("run", ""))]
            step_text = params.get("step", "latest")
            step = None if step_text == "latest" else -1 if step_text == "all" else int(step_text)
        except (ValueError, IndexError):
            return PlainTextResponse("run must be a run's index and step a number, 'latest' or 'all'", status_code=400)
        return _json(completion_rows(run, step, params.get("q", ""), MAX_COMPLETION_ROWS))

    app = Starlette(routes=[
        Route("/", index),
        Route("/static/plotly.min.js", plotly),
        Mount("/static", StaticFiles(directory=STATIC)),
        Route("/api/data", data),
        Route("/api/completions", completions),
    ])
    app.state.payload = cache
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections queue from here on, before uvicorn starts accepting
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app: Starlette, sock: socket.socket, on_ready: Callable[[], None] = lambda: None) -> None:
    """Serves until Ctrl-C or SIGTERM; ``on_ready`` runs once stopping is handled (print the URL there)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))

    def stop(signum: int, frame: object) -> None:
        # A flag, not KeyboardInterrupt: an interrupt raised inside a garbage-collection
        # callback (jax installs one) is swallowed, and the server would then never stop.
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    on_ready()
    server.run(sockets=[sock])


class BackgroundServer:
    """The app served from a thread (tests, benchmarks): ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
