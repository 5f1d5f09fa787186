"""The dashboard server over HTTP, the report file, and the two CLI commands' errors."""

from __future__ import annotations

import http.client
import importlib.util
from html.parser import HTMLParser
import json
import re
import socket
from urllib.parse import urlparse

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")

from dashboard_fixtures import append_step, write_run  # noqa: E402

from jaxalign.cli import main  # noqa: E402
from jaxalign.dashboard.runs import RunSet  # noqa: E402
from jaxalign.dashboard.server import BackgroundServer, create_app  # noqa: E402

SECRET = "top-secret-outside-the-run-dirs"


@pytest.fixture
def served(tmp_path):
    run_dir = write_run(tmp_path / "runs" / "ppo", range(1, 21))
    (tmp_path / "secret.txt").write_text(SECRET)  # next to the runs' folder, never to be served
    (tmp_path / "runs" / "secret.txt").write_text(SECRET)
    with BackgroundServer(create_app(RunSet([run_dir]))) as url:
        yield url, run_dir


def _linked_resources(html: str) -> list[str]:
    """``src``/``href`` of the page's tags (script bodies are text to the parser, not tags)."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ("src", "href") and value)

    Parser().feed(html)
    return found


def _get(url: str, path: str) -> tuple[int, str]:
    """A raw GET: the path goes out exactly as written (no client-side normalisation of '..')."""
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, body


@pytest.mark.parametrize("path", [
    "/static/../../../../secret.txt", "/static/..%2f..%2f..%2fsecret.txt", "/static/%2e%2e/%2e%2e/secret.txt",
    "/static/../../../../../../etc/passwd", "/static//etc/passwd", "/../secret.txt", "/secret.txt",
    "/metrics.jsonl", "/static/../metrics.jsonl", "/api/completions?run=../../secret.txt&step=1",
    "/api/completions?run=0&step=../../secret", "/api/completions?run=-5&step=latest", "/api/completions?run=7",
])
def test_nothing_outside_the_run_dirs_can_be_fetched(served, path):
    url, _ = served
    status, body = _get(url, path)
    assert status in (400, 404), (path, status)
    assert SECRET not in body and "root:" not in body


def test_page_loads_nothing_from_another_host(served):
    url, _ = served
    status, page = _get(url, "/")
    assert status == 200
    resources = _linked_resources(page)
    assert resources == ["static/app.css", "static/plotly.min.js", "static/app.js"]
    for resource in resources:
        status, text = _get(url, "/" + resource)
        assert status == 200 and len(text) > 1000
        if resource != "static/plotly.min.js":  # plotly.js's own strings hold docs links it never loads
            assert not re.search(r"https?://|//cdn", text), resource


def test_data_api_answers_unchanged_until_the_run_writes(served):
    url, run_dir = served
    status, body = _get(url, "/api/data")
    payload = json.loads(body)
    assert status == 200 and payload["runs"][0]["step"] == 20 and payload["runs"][0]["algo"] == "ppo"
    assert json.loads(_get(url, f"/api/data?have={payload['version']}")[1]) == {
        "version": payload["version"], "unchanged": True}
    append_step(run_dir, 21)
    newer = json.loads(_get(url, f"/api/data?have={payload['version']}")[1])
    assert newer["version"] > payload["version"] and newer["runs"][0]["step"] == 21


def test_completions_api(served):
    url, _ = served
    rows = json.loads(_get(url, "/api/completions?run=0&step=latest&q=GREAT")[1])
    assert rows["step"] == 20 and rows["total"] == 1 and rows["rows"][0]["rewards"]["lexicon"] == 0.0
    status, body = _get(url, "/api/completions?run=zero")
    assert status == 400 and "run must be a run's index" in body


def test_cli_missing_run_dir_is_one_line_exit_2(tmp_path, capsys):
    for command in ("dashboard", "report"):
        assert main([command, str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"jaxalign: error: run dir not found: {tmp_path / 'nope'}"


def test_cli_bad_smoothing_and_unwritable_report_are_one_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", range(1, 3))
    assert main(["report", str(run_dir), "--smoothing", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "jaxalign: error: --smoothing must be in [0, 1), got 1.5"
    (tmp_path / "file").write_text("")
    assert main(["report", str(run_dir), "-o", str(tmp_path / "file" / "report.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jaxalign: error: cannot write {tmp_path / 'file' / 'report.html'}: ") and "\n" not in err


def test_cli_port_in_use_is_one_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", range(1, 3))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jaxalign: error: cannot listen on 127.0.0.1:{port}") and "--port" in err and "\n" not in err


def test_cli_without_the_extra_names_what_to_install(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("starlette", "uvicorn") else real_find_spec(name, *args))
    assert main(["dashboard", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxalign: dashboard needs packages that are not installed (starlette, uvicorn): pip install 'jaxalign[dashboard]'")


def test_report_is_one_self_contained_file(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", range(1, 31))
    write_run(tmp_path / "runs" / "b", range(1, 21), kl_coef=0.5)
    output = tmp_path / "out" / "report.html"
    assert main(["report", str(tmp_path / "runs"), "-o", str(output)]) == 0
    html = output.read_text()
    assert _linked_resources(html) == []  # every script and style is inline
    assert "plotly.js v" in html and '"name":"a"' in html and '"name":"b"' in html
    config = json.loads(re.search(r'<script id="jaxalign-config" type="application/json">(.*?)</script>', html,
                                  flags=re.S).group(1))
    assert sorted(config["payload"]["completions"]) == ["0", "1"]  # a sample of replies travels with it
    assert {row["step"] for row in config["payload"]["completions"]["0"]} == {10, 20, 30}
    assert "written to" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == [output]  # no temporary file left behind


def test_report_png_without_a_browser_is_one_line(tmp_path, monkeypatch, capsys):
    chromium = pytest.importorskip("choreographer.browsers.chromium")
    monkeypatch.setattr(chromium.Chromium, "find_browser", classmethod(lambda cls, **options: None))
    run_dir = write_run(tmp_path / "run", range(1, 5))
    assert main(["report", str(run_dir), "--png", str(tmp_path / "png")]) == 1
    assert capsys.readouterr().err.strip() == (
        "jaxalign: error: --png draws with kaleido, which needs Chrome or Chromium and found neither: "
        "apt-get install chromium (or plotly_get_chrome where the internet is reachable)")


def test_cli_dashboard_serves_until_interrupted(tmp_path):
    """The real command: prints its URL, serves the page and data, stops cleanly on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys

    run_dir = write_run(tmp_path / "run", range(1, 11))
    process = subprocess.Popen([sys.executable, "-m", "jaxalign.cli", "dashboard", str(run_dir), "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        line = process.stderr.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+) ", line).group(1)
        status, body = _get(url, "/api/data")
        assert status == 200 and json.loads(body)["runs"][0]["step"] == 10
        assert _get(url, "/")[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind
            raise
    assert code == 0
