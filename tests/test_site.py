"""The documentation site: `mkdocs build --strict`, its links, its API inventory, and
the home and a model page rendered by headless Chromium.

The site is built once per test session, in the TensorFlow pass of scripts/test.sh
(the generated figures build real models; one backend is enough for a static site).
"""

import html.parser
import http.server
import importlib
import importlib.util
import os
import pkgutil
import posixpath
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("install the browser and its driver: `apt-get install -y chromium` and "
                "`pip install -c constraints/cpu.txt -e .[test]` (playwright; never "
                "`playwright install`: the system chromium is used)")

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="the site is built once per suite, in the KERAS_BACKEND=tensorflow pass")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's directory (`mkdocs build --strict`, once)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               NO_MKDOCS_2_WARNING="1")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    print(f"mkdocs build --strict: {time.monotonic() - start:.1f} s")
    return out


def test_strict_build_makes_every_page(site):
    # One page per nav entry; the generated ones included.
    for page in ["index.html", "models/index.html", "models/inception_v3/index.html",
                 "api/index.html", "api/transfer/index.html", "benchmarks/index.html",
                 "changelog/index.html", "objects.inv", "search/search_index.json"]:
        assert (site / page).is_file(), page


class _Page(html.parser.HTMLParser):
    """The ids (anchors) of one HTML page and the URLs it refers to."""

    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.refs.append((tag, attrs[key]))


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_internal_links_and_anchors_resolve(site):
    site_url = _site_url()
    base = urllib.parse.urlsplit(site_url).path   # 404.html links from the site root
    pages = {p.relative_to(site).as_posix(): _parse(p) for p in site.rglob("*.html")}
    broken, external = [], set()
    for name, page in pages.items():
        for tag, ref in page.refs:
            if ref.startswith(site_url):   # canonical links: pages of this site
                ref = base + ref[len(site_url):]
            url = urllib.parse.urlsplit(ref)
            if url.scheme in ("http", "https") or ref.startswith("//"):
                external.add(ref)
                continue
            if url.scheme:   # mailto:, data:, javascript:
                continue
            if url.path.startswith("/"):
                path = posixpath.relpath(url.path, base) if url.path.startswith(base) else None
            else:
                path = posixpath.normpath(posixpath.join(posixpath.dirname(name),
                                                         urllib.parse.unquote(url.path)))
            if path is None or path.startswith(".."):
                broken.append(f"{name}: <{tag}> {ref} (outside the site)")
                continue
            if path in ("", "."):
                path = "index.html"
            elif url.path and (url.path.endswith("/") or (site / path).is_dir()):
                path = posixpath.join(path, "index.html")
            elif not url.path:
                path = name
            if not (site / path).is_file():
                broken.append(f"{name}: <{tag}> {ref} -> {path} (no such file)")
            elif url.fragment and path.endswith(".html"):
                anchor = urllib.parse.unquote(url.fragment)
                if anchor not in pages[path].ids:
                    broken.append(f"{name}: <{tag}> {ref} (no #{anchor} in {path})")
    print(f"{len(pages)} pages; external links ({len(external)}):",
          *sorted(external), sep="\n  ")
    assert not broken, "\n".join(broken)
    # External links are few and deliberate (the repository, the publishers' pages).
    assert len(external) < 30, sorted(external)


def _site_url():
    for line in (ROOT / "mkdocs.yml").read_text().splitlines():
        if line.startswith("site_url:"):
            return line.split(":", 1)[1].strip()
    return "/"


def _inventory(path):
    """Object names of a Sphinx inventory (objects.inv, version 2)."""
    raw = path.read_bytes()
    header = raw.split(b"\n", 4)
    assert header[0] == b"# Sphinx inventory version 2", header[0]
    assert b"zlib" in header[3], header[3]
    lines = zlib.decompress(header[4]).decode("utf-8").splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def test_every_public_name_is_in_the_api_reference(site):
    import keras_inception
    inventory = _inventory(site / "objects.inv")
    modules = [keras_inception] + [
        importlib.import_module(m.name) for m in pkgutil.walk_packages(
            keras_inception.__path__, keras_inception.__name__ + ".")]
    assert len(modules) > 20
    missing = [f"{module.__name__}.{name}" for module in modules
               for name in getattr(module, "__all__", ())
               if f"{module.__name__}.{name}" not in inventory]
    assert not missing, f"not in the API reference (objects.inv): {missing}"
    for module in modules:
        if hasattr(module, "__all__"):
            assert module.__name__ in inventory, module.__name__


def _load_hook():
    spec = importlib.util.spec_from_file_location("site_hook", ROOT / "docs/hooks/site.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_gen_lines_expand_and_fail_with_page_and_line(monkeypatch):
    from mkdocs.exceptions import PluginError
    hook = _load_hook()

    class Figures:
        GENERATORS = {"twice": lambda word: f"{word} {word}\n",
                      "broken": lambda: 1 / 0, "empty": lambda: ""}

    monkeypatch.setattr(hook, "_import_gen", lambda name: Figures)
    page = "# T\n\n<!-- gen: twice 'a b' -->\n```\n<!-- gen: nothing -->\n```\n"
    assert hook.expand_generators(page, "p.md") == (
        "# T\n\na b a b\n```\n<!-- gen: nothing -->\n```\n")   # fenced: left alone
    for line, error in [("<!-- gen: nothing -->", "p.md:2: unknown generator 'nothing'"),
                        ("<!-- gen: broken -->", "p.md:2: gen broken failed: Zero"),
                        ("<!-- gen: empty -->", "p.md:2: gen empty returned"),
                        ("<!-- gen: twice -->", "p.md:2: gen twice failed: TypeError")]:
        with pytest.raises(PluginError, match=re.escape(error)):
            hook.expand_generators(f"# T\n{line}\n", "p.md")


def test_every_module_has_an_api_page():
    hook = _load_hook()
    pages, nav = hook.api_pages()
    modules = hook.package_modules()
    assert {"registry", "transfer", "convert", "convert.readers"} <= set(modules)
    for module in modules:
        assert pages[hook.api_path(module)] == f"::: keras_inception.{module}\n"
    assert len(pages) == len(modules) + 1    # + the package's own page
    assert nav[0] == "api/index.md" and [next(iter(s)) for s in nav[1:]][-1] == "Internals"


# --- the site in a browser ------------------------------------------------------------

@pytest.fixture(scope="module")
def server(site):
    """The built site over HTTP on 127.0.0.1 (a free port)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless system Chromium with a new, empty profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.is_file():
        missing = "playwright" if sync_playwright is None else str(CHROMIUM)
        message = f"{missing} is missing: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), headless=True,
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


def _visit(browser, url, screenshot):
    """Loads `url`; returns the page and what went wrong (console errors, failed
    requests, HTTP errors)."""
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(
        f"console error: {m.text} ({m.location.get('url')})"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(
        f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(
        f"HTTP {r.status}: {r.url}"))
    response = page.goto(url, wait_until="networkidle")
    assert response is not None and response.ok, url
    page.screenshot(path=str(screenshot), full_page=True)
    return page, problems


def _not_blank(path):
    from PIL import Image
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert pixels.shape[0] >= 900 and pixels.shape[1] == 1280, pixels.shape
    # A rendered page has text and colour: far from one flat colour.
    assert pixels.std() > 10, f"{path}: looks blank (std {pixels.std():.1f})"
    values, counts = np.unique(pixels.astype(np.uint8), return_counts=True)
    assert counts.max() / pixels.size < 0.97, f"{path}: one colour covers the page"
    assert len(values) > 16, f"{path}: only {len(values)} grey levels"


def _keep(screenshot):
    """Copies a screenshot to runs/site/ (gitignored) for a person to look at."""
    out = ROOT / "runs" / "site"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, out / screenshot.name)


def _check_shell(page):
    assert "keras-inception" in page.title(), page.title()
    assert page.locator("nav.md-nav--primary").first.is_visible() or \
        page.locator(".md-header__title").first.is_visible()
    # The primary navigation lists the top-level sections.
    nav = page.locator("nav.md-nav--primary").first.inner_text()
    for entry in ("Getting started", "Models", "Tutorials", "API reference"):
        assert entry in nav, f"{entry!r} not in the navigation:\n{nav}"


def test_home_page_renders(browser, server, tmp_path):
    shot = tmp_path / "home.png"
    page, problems = _visit(browser, server, shot)
    assert not problems, "\n".join(problems)
    _check_shell(page)
    article = page.locator("article.md-content__inner")
    assert article.locator("h1").first.is_visible()
    assert "GoogLeNet" in article.inner_text()
    assert article.locator("pre code").count() >= 1      # the short example
    _not_blank(shot)
    _keep(shot)
    page.close()


def test_model_page_renders(browser, server, tmp_path):
    shot = tmp_path / "model_inception_v3.png"
    page, problems = _visit(browser, server + "models/inception_v3/", shot)
    assert not problems, "\n".join(problems)
    _check_shell(page)
    article = page.locator("article.md-content__inner")
    assert "inception" in article.locator("h1").first.inner_text().lower()
    table = article.locator("table").first
    assert table.is_visible() and table.locator("tr").count() >= 2   # header + a row
    # A figure drawn from the model: an inline SVG of real size (not an icon).
    sizes = article.locator("svg").evaluate_all(
        "els => els.map(e => [e.getBoundingClientRect().width, "
        "e.getBoundingClientRect().height])")
    assert any(w >= 100 and h >= 100 for w, h in sizes), sizes
    _not_blank(shot)
    _keep(shot)
    page.close()
