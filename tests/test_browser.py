"""The rendered book, read in a real browser (Chromium driven by Playwright) at 1280 px.

Every page of ``_toc.yml`` is opened once; each check below is its own test, parametrised by
page, so that a failure names the page and the check:

* ``test_math_renders``: MathJax typeset every formula (no ``mjx-merror``, no math element
  left untypeset, no raw TeX such as ``$x$``, ``\\(``, ``\\frac`` in the visible text);
* ``test_no_visible_parameters_cell``: the ``parameters`` and papermill's
  ``injected-parameters`` cells are removed or collapsed (their code not visible);
* ``test_every_figure_has_a_caption``: every image of the article sits in a ``<figure>``
  with a non-empty ``<figcaption>``;
* ``test_page_does_not_scroll_sideways``: the page is no wider than the 1280 px window;
* ``test_no_content_wider_than_its_column``: no block of the article (code, output, table,
  equation) needs its own horizontal scroll bar or runs past the article's right edge;
* ``test_internal_links_resolve``: every link to the book itself (and every resource the page
  loads from it) reaches an existing file and, for ``#fragment`` links, an existing anchor.

The book is built into a temporary folder (``jupyter-book build``: it renders the stored
notebook outputs, it executes nothing), unless ``_build/html`` is newer than every source
file, in which case that build is used (``KD2M_BOOK_HTML=<folder>`` tests a given build).
Pages are served over HTTP on 127.0.0.1.

Needs the Python package ``playwright`` and a Chromium from the system (Debian:
``apt-get install chromium``); the browser is never downloaded at run time. Where either is
missing the tests are skipped with a message that says what to install. Set
``KD2M_CHROMIUM`` to a browser executable to use another one, and ``KD2M_SCREENSHOTS`` to a
folder to save a full-page screenshot of every page there.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 900
BUILD_TIMEOUT_S = 600
MATHJAX_TIMEOUT_MS = 30_000
_MATHJAX_READY = (
    "() => !document.querySelector('.math') || "
    "!!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)"
)


def _toc_pages() -> list[str]:
    """Docnames of _toc.yml in reading order ("book/intro", "book/metrics", ...)."""

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and isinstance(value, str):
                    yield str(Path(value).with_suffix(""))
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))))


PAGES = _toc_pages()


# --------------------------------------------------------------------------- the build


def _sources() -> list[Path]:
    files = [ROOT / "_config.yml", ROOT / "_toc.yml"]
    files += [
        p
        for p in (ROOT / "book").rglob("*")
        if p.is_file() and not {"_build", ".ipynb_checkpoints", "__pycache__"} & set(p.parts)
    ]
    return files


def _fresh_build() -> Path | None:
    """``_build/html`` if it holds every page and is newer than every source file."""
    html = ROOT / "_build" / "html"
    pages = [html / f"{page}.html" for page in PAGES]
    if not all(p.exists() for p in pages):
        return None
    built = min(p.stat().st_mtime for p in pages)
    newest = max(p.stat().st_mtime for p in _sources() if p.exists())
    return html if built > newest else None


def _jupyter_book() -> list[str]:
    sibling = Path(sys.executable).with_name("jupyter-book")
    exe = str(sibling) if sibling.exists() else shutil.which("jupyter-book")
    if exe is None:
        pytest.skip(
            "jupyter-book is not installed next to this Python or on PATH: install the book "
            "extra (make setup) to build the book for the browser tests"
        )
    return [exe]


@pytest.fixture(scope="session")
def html_dir(tmp_path_factory) -> Path:
    given = os.environ.get("KD2M_BOOK_HTML")
    if given:
        if not (Path(given) / "index.html").is_file():
            pytest.fail(f"KD2M_BOOK_HTML={given} holds no index.html: point it at a built book")
        return Path(given)
    fresh = _fresh_build()
    if fresh is not None:
        return fresh
    out = tmp_path_factory.mktemp("book")
    cmd = _jupyter_book() + ["build", str(ROOT), "--path-output", str(out), "--keep-going"]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    html = out / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        pytest.fail(f"the book did not build ({' '.join(cmd)}), exit {proc.returncode}:\n{tail}")
    return html


# --------------------------------------------------------------------------- server, browser


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="session")
def server(html_dir):
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _chromium() -> str:
    exe = os.environ.get("KD2M_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None
    )
    if not exe:
        pytest.skip(
            "no Chromium found (looked for `chromium` and `chromium-browser` on PATH, and "
            "$KD2M_CHROMIUM): install it, e.g. `apt-get install chromium` on Debian"
        )
    return exe


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed: `pip install playwright`")
    exe = _chromium()
    global PlaywrightTimeout
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with sync_playwright() as pw:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        chromium = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


PlaywrightTimeout = TimeoutError  # replaced by playwright's own when it is installed

# One JavaScript pass per page collects everything the checks need.
_COLLECT = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const article = document.querySelector('article.bd-article') || document.body;
  const visible = (el) => !!el && el.checkVisibility() && el.getBoundingClientRect().height > 0;
  const where = (el) => {
    const sec = el.closest('section[id]');
    return (sec ? '#' + sec.id : '') + ' ' + (el.textContent || el.alt || '').trim()
      .replace(/\s+/g, ' ').slice(0, 70);
  };

  // MathJax errors and math left as TeX
  // (MathJax writes an undefined macro such as \foo in red instead of failing)
  const mathErrors = [...new Set([
    ...[...document.querySelectorAll('mjx-math [data-mjx-error], mjx-math mjx-merror')]
      .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)),
    ...[...document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')]
      .map(e => 'undefined macro ' + e.textContent.slice(0, 60)),
  ])];
  const untypeset = [...article.querySelectorAll('.math')]
    .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80));
  const skip = 'script, style, pre, code, kbd, samp, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const commands = ['frac', 'mathbb', 'mathrm', 'mathcal', 'operatorname', 'lVert', 'rVert',
    'sum', 'alpha', 'beta', 'lambda', 'sigma', 'Sigma', 'mu', 'theta', 'hat', 'tilde', 'le',
    'ge', 'cdot', 'dots', 'sqrt', 'top', 'quad', 'begin', 'end'];
  // $...$, \( \) \[ \], a known command not followed by a letter (\frac12, \sum_k),
  // any command with a braced argument (\mathbf{x}), $ before a command, ^{ or _{
  const tex = new RegExp(String.raw`\$[^$\s][^$]*\$|\\[()[\]]|\\(${commands.join('|')})(?![A-Za-z])`
    + String.raw`|\\[A-Za-z]+\{|\$\\[A-Za-z]|[_^]\{`);
  const rawTex = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(skip) || !visible(p)) continue;
    const m = n.textContent.match(tex);
    if (m) rawTex.push(n.textContent.trim().replace(/\s+/g, ' ').slice(0, 100));
  }

  // parameters cells whose code (or output) a reader can see
  const paramCells = '.cell.tag_parameters, .cell.tag_injected-parameters';
  const params = [...article.querySelectorAll(paramCells)]
    .filter(c => [...c.querySelectorAll('.cell_input, .cell_output')].some(visible))
    .map(c => (c.classList.contains('tag_parameters') ? 'parameters: ' : 'injected-parameters: ')
      + c.textContent.trim().replace(/\s+/g, ' ').slice(0, 60));

  // images of the article, and whether each has a caption
  const images = [...article.querySelectorAll('img, svg:not(mjx-container svg)')]
    .filter(e => visible(e) && e.getBoundingClientRect().width > 40)
    .map(e => {
      const fig = e.closest('figure');
      const cap = fig ? fig.querySelector('figcaption') : null;
      const text = cap ? cap.textContent.trim() : '';
      return {src: (e.getAttribute('src') || e.tagName).split('/').pop().slice(0, 24),
              section: where(e).split(' ')[0], caption: text.slice(0, 80),
              numbered: !!(cap && cap.querySelector('.caption-number'))};
    });

  // horizontal overflow: the page, and blocks of the article
  const pageWidth = document.documentElement.scrollWidth;
  const clientWidth = document.documentElement.clientWidth;
  const right = article.getBoundingClientRect().right;
  const wide = [];
  for (const el of article.querySelectorAll('*')) {
    if (!visible(el) || el.closest('mjx-assistive-mml')) continue;
    const style = getComputedStyle(el);
    const scrolls = ['auto', 'scroll'].includes(style.overflowX)
      && el.scrollWidth > el.clientWidth + 1;
    const past = el.getBoundingClientRect().right > right + 1 && style.position !== 'fixed';
    if (scrolls || (past && !el.parentElement.closest('.x-wide-reported'))) {
      el.classList.add('x-wide-reported');
      wide.push(`<${el.tagName.toLowerCase()} class="${el.className}"> ` +
        (scrolls ? `scrolls ${el.scrollWidth}px in ${el.clientWidth}px`
                 : `ends ${Math.round(el.getBoundingClientRect().right - right)}px past the column`)
        + ' ' + where(el));
    }
  }

  // links and anchors
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.name);
  return {mathErrors, untypeset, rawTex, params, images, pageWidth, clientWidth,
          wide: wide.slice(0, 40), nWide: wide.length, links, ids};
}
"""


@pytest.fixture(scope="session")
def reports(browser, server, html_dir):
    """Page docname -> what the browser saw (collected once per page, on first use)."""
    cache: dict[str, dict] = {}
    shots = os.environ.get("KD2M_SCREENSHOTS")

    def get(page: str) -> dict:
        if page in cache:
            return cache[page]
        context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        tab = context.new_page()
        failed, console = [], []
        tab.on(
            "requestfailed",
            lambda r: failed.append(f"{r.url} ({r.failure})") if r.url.startswith(server) else None,
        )
        tab.on(
            "response",
            lambda r: (
                failed.append(f"{r.url} (HTTP {r.status})")
                if r.url.startswith(server) and r.status >= 400
                else None
            ),
        )
        tab.on(
            "console",
            lambda m: console.append(m.text) if m.type == "error" else None,
        )
        url = f"{server}/{page}.html"
        response = tab.goto(url, wait_until="load")
        assert response is not None and response.ok, f"{url}: {response and response.status}"
        try:  # MathJax loads asynchronously; _COLLECT then awaits its first typesetting
            tab.wait_for_function(_MATHJAX_READY, timeout=MATHJAX_TIMEOUT_MS)
        except PlaywrightTimeout:
            pass  # MathJax never started: test_math_renders reports the untypeset math
        report = tab.evaluate(_COLLECT)
        report.update(url=url, failed=failed, console=console)
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(Path(shots) / f"{page.replace('/', '_')}.png"), full_page=True)
        context.close()
        cache[page] = report
        return report

    return get


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("page", PAGES)
def test_math_renders(reports, page):
    r = reports(page)
    problems = [f"MathJax error: {e}" for e in r["mathErrors"]]
    problems += [f"math not typeset: {t}" for t in r["untypeset"]]
    problems += [f"raw TeX in the text: {t!r}" for t in r["rawTex"]]
    problems += [f"console: {m}" for m in r["console"] if "mathjax" in m.lower()]
    assert not problems, f"{page}:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("page", PAGES)
def test_no_visible_parameters_cell(reports, page):
    shown = reports(page)["params"]
    assert not shown, (
        f"{page}: parameters cells visible to the reader (tag them remove-cell or hide-input):\n"
        + "\n".join(shown)
    )


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_has_a_caption(reports, page):
    bare = [i for i in reports(page)["images"] if not i["caption"]]
    assert not bare, f"{page}: {len(bare)} figure(s) without a caption:\n" + "\n".join(
        f"{i['src']} in {i['section'] or 'the page'}" for i in bare
    )


@pytest.mark.parametrize("page", PAGES)
def test_page_does_not_scroll_sideways(reports, page):
    r = reports(page)
    assert r["pageWidth"] <= r["clientWidth"] + 1, (
        f"{page}: the page is {r['pageWidth']} px wide in a {r['clientWidth']} px window "
        f"(at {WIDTH} px); widest blocks:\n" + "\n".join(r["wide"][:10])
    )


@pytest.mark.parametrize("page", PAGES)
def test_no_content_wider_than_its_column(reports, page):
    r = reports(page)
    assert not r["nWide"], (
        f"{page}: {r['nWide']} block(s) wider than the text column at {WIDTH} px "
        "(a reader has to scroll them sideways):\n" + "\n".join(r["wide"][:15])
    )


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return frozenset(re.findall(r'(?:id|name)="([^"]+)"', text))


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(reports, page, server, html_dir):
    r = reports(page)
    here = set(r["ids"])
    broken = list(r["failed"])
    for href in sorted(set(r["links"])):
        if not href.startswith(server + "/"):
            continue  # another site, mailto:, javascript: ...
        target, fragment = urldefrag(href)
        path = html_dir / unquote(urlsplit(target).path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(f"{href}: no file {path.relative_to(html_dir)}")
            continue
        if fragment and path.suffix == ".html":
            anchors = here if target == r["url"] else _anchors(path)
            if unquote(fragment) not in anchors:
                broken.append(f"{href}: no anchor #{fragment} in {path.relative_to(html_dir)}")
    assert not broken, f"{page}: broken internal links:\n" + "\n".join(broken[:20])
