"""``jaxalign dashboard`` and ``jaxalign report``: their arguments and what they do.

Kept apart from cli.py so the main CLI gains two lines; the web and plotting packages are
imported only when one of these commands runs (they are the ``dashboard`` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

EXTRA = "pip install 'jaxalign[dashboard]'"
# import name -> distribution name, for the one-line hint when some are missing
REQUIRED = {"plotly": "plotly", "starlette": "starlette", "uvicorn": "uvicorn", "tsdownsample": "tsdownsample",
            "orjson": "orjson"}


def add_commands(commands: argparse._SubParsersAction) -> None:
    dashboard = commands.add_parser(
        "dashboard", help="live web page over run dirs: reward and KL together, completions, evals")
    dashboard.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs, or folders of run dirs")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1: this machine only; use an SSH tunnel)")
    dashboard.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 = any free port)")
    dashboard.add_argument("--poll", type=float, default=2.0, help="seconds between the page's checks for new data")
    dashboard.add_argument("--smoothing", type=float, default=0.6, help="initial smoothing, 0 (raw) to 0.99")

    report = commands.add_parser("report", help="the dashboard's views as one offline HTML file and/or PNGs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs, or folders of run dirs")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default report.html unless --png)")
    report.add_argument("--png", default=None, metavar="DIR", help="also write one PNG per figure into DIR")
    report.add_argument("--smoothing", type=float, default=0.6, help="smoothing, 0 (raw) to 0.99")


def missing_packages() -> list[str]:
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def _error(message: str, code: int = 2) -> int:
    print(f"jaxalign: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    missing = missing_packages()
    if missing:
        return _error(f"{args.command} needs packages that are not installed ({', '.join(missing)}): {EXTRA}")
    if not 0 <= args.smoothing < 1:
        return _error(f"error: --smoothing must be in [0, 1), got {args.smoothing}")
    from jaxalign.dashboard.runs import RunDirError, RunSet

    started = time.monotonic()
    try:
        runset = RunSet(args.run_dirs)
        return _dashboard(args, runset, started) if args.command == "dashboard" else _report(args, runset)
    except RunDirError as err:
        return _error(f"error: {err}")
    except KeyboardInterrupt:  # Ctrl-C while reading big runs: no traceback
        return 130


def _dashboard(args: argparse.Namespace, runset, started: float) -> int:
    from jaxalign.dashboard.server import bind, create_app, serve, url_of

    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        return _error(f"error: cannot listen on {args.host}:{args.port} ({err.strerror}): pass another --port")
    app = create_app(runset, poll_ms=int(args.poll * 1000), smoothing=args.smoothing)
    app.state.payload.get()  # read and lay out everything now, so the first page load is quick

    def ready() -> None:
        runs = len(runset.runs)
        print(f"jaxalign: dashboard of {runs} run{'s' * (runs != 1)} at {url_of(sock)} "
              f"(read in {time.monotonic() - started:.1f} s; Ctrl-C stops)", file=sys.stderr, flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"jaxalign: warning: listening on {args.host}: anyone who can reach this port can read the runs",
                  file=sys.stderr)

    serve(app, sock, ready)
    return 0


def _report(args: argparse.Namespace, runset) -> int:
    from jaxalign.dashboard.report import write_html, write_pngs
    from jaxalign.dashboard.payload import build_payload

    output = args.output or (None if args.png else "report.html")
    try:
        payload = write_html(runset, output, smoothing=args.smoothing) if output else build_payload(runset)
    except OSError as err:
        return _error(f"error: cannot write {output}: {err.strerror or err}", 1)
    if output:
        print(f"jaxalign: report of {len(runset.runs)} runs written to {output}", file=sys.stderr)
    if args.png:
        try:
            paths = write_pngs(payload, args.png, smoothing=args.smoothing)
        except RuntimeError as err:  # plotly re-raises kaleido's ChromeNotFoundError as a RuntimeError
            if "chrome" not in str(err).lower():
                raise
            return _error("error: --png draws with kaleido, which needs Chrome or Chromium and found neither: "
                          "apt-get install chromium (or plotly_get_chrome where the internet is reachable)", 1)
        print(f"jaxalign: {len(paths)} PNG figures written to {args.png}", file=sys.stderr)
    return 0
