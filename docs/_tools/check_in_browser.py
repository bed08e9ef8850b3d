"""Load the built documentation site in headless Chromium and fail where a reader would see a fault.

The site is served from ``127.0.0.1`` (no network needed: MathJax ships with it). For each page
in :data:`PAGES` the check loads the page, lets its scripts run, and reads the rendered DOM:

* every formula is typeset: no element of class ``arithmatex`` still holds raw TeX (``\\(``,
  ``\\[``), and the page holds at least one MathJax container;
* no text outside code (navigation and tables of contents included) holds raw TeX;
* the page raised no JavaScript error, and no request of the page failed (HTTP status >= 400).

Run ``python docs/_tools/check_in_browser.py site`` after ``mkdocs build`` (``make docs-check``).
Needs Debian's ``chromium`` (or ``chromium-browser`` / ``google-chrome``) on the PATH.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

#: The formulation page and one API page: both are dense with formulas.
PAGES = ("formulation/", "api/fair_loss/")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

UNRENDERED = re.compile(r'class="arithmatex"[^>]*>\s*\\[(\[]')
NOT_TEXT = re.compile(r"<(script|style|pre|code)\b.*?</\1>", re.DOTALL)
RAW_TEX = re.compile(r"\\[(\[].{0,40}")
JAVASCRIPT_ERROR = re.compile(r"CONSOLE.*(Uncaught|Error)", re.IGNORECASE)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site quietly and records the requests that failed."""

    failures: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        if str(code).isdigit() and int(code) >= 400:
            self.failures.append(f"HTTP {code} for {self.path}")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(f"check_in_browser: none of {BROWSERS} is installed (apt-get install chromium)")


def _rendered_dom(browser: str, url: str) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and the browser's log."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    return run.stdout, run.stderr


def check_page(browser: str, base_url: str, page: str) -> list[str]:
    """Problems a reader would see on one page (empty when it is fine)."""
    dom, log = _rendered_dom(browser, base_url + page)
    problems = []
    if "<body" not in dom:
        return [f"{page}: the browser returned no page"]
    if "<mjx-container" not in dom:
        problems.append(f"{page}: no formula was typeset (is MathJax served with the site?)")
    unrendered = len(UNRENDERED.findall(dom))
    if unrendered:
        problems.append(f"{page}: {unrendered} formula(s) left as raw TeX")
    text = re.sub(r"<[^>]+>", " ", NOT_TEXT.sub(" ", dom))  # navigation, headings, body
    for raw in RAW_TEX.findall(text)[:3]:
        problems.append(f"{page}: raw TeX in the text: {' '.join(raw.split())!r}")
    problems += [
        f"{page}: {line.strip()}" for line in log.splitlines() if JAVASCRIPT_ERROR.search(line)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("site", type=Path, help="the built site (mkdocs build's output)")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        sys.exit(f"check_in_browser: {args.site} holds no built site (run mkdocs build first)")
    browser = _browser()
    handler = functools.partial(_RecordingHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        problems = [problem for page in PAGES for problem in check_page(browser, base_url, page)]
    finally:
        server.shutdown()
    problems += _RecordingHandler.failures
    for problem in problems:
        print(f"check_in_browser: {problem}", file=sys.stderr)
    if problems:
        return 1
    name = Path(browser).name
    print(f"check_in_browser: {len(PAGES)} pages rendered in {name}, every formula typeset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
