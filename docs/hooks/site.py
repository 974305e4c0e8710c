"""MkDocs hook (mkdocs.yml `hooks:`): the pages and figures made from the code.

- `models/*.md`: the model pages, from `docs/_gen/model_pages.py: model_pages()`.
- `api/*.md`: one mkdocstrings page per module of keras_inception, found by walking the
  package, so a new module cannot be left out (it must be given a section below).
- `<!-- gen: NAME arg ... -->` lines in any page: replaced by
  `docs/_gen/figures.py: GENERATORS[NAME](*args)`. An unknown name or a failing
  generator stops the build with the page and line.
"""

import os

# Before anything imports keras: the generators build real models on this backend.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ast  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mkdocs.exceptions import PluginError  # noqa: E402
from mkdocs.structure.files import File  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
PACKAGE = "keras_inception"

# The API reference's sections, in nav order: every module of the package is in
# exactly one (checked at build time both ways), "" is the package itself.
API_SECTIONS = [
    ("Models", ["registry", "googlenet", "inception_v2", "inception_v3", "inception_v4",
                "inception_resnet", "xception"]),
    ("Weights and conversion", ["pretrained", "weights_io", "download", "convert"]),
    ("Features, preprocessing, statistics", ["features", "preprocessing", "stats"]),
    ("Transfer learning, data, training, export", ["transfer", "data", "training",
                                                    "distribute", "export"]),
    ("Performance", ["optimize", "accelerate", "xla_cpu", "initializers"]),
    ("Building blocks", ["layers"]),
    ("Internals", ["base", "cli", "manifest", "refmaps", "testing", "convert.readers",
                   "convert.__main__"]),
]

GEN_LINE = re.compile(r"^\s*<!--\s*gen:\s*(?P<spec>.*?)\s*-->\s*$")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _import_gen(name):
    # docs/_gen is imported as the top-level package `_gen` (docs/ on sys.path).
    if str(DOCS) not in sys.path:
        sys.path.insert(0, str(DOCS))
    import importlib
    return importlib.import_module(f"_gen.{name}")


def _has_all(path: Path) -> bool:
    """Whether a module assigns `__all__` (read, not imported: __main__ runs a CLI)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.Assign, ast.AnnAssign))
               and any(isinstance(t, ast.Name) and t.id == "__all__"
                       for t in (node.targets if isinstance(node, ast.Assign)
                                 else [node.target]))
               for node in tree.body)


def package_modules(root: Path = ROOT / PACKAGE, prefix: str = "") -> list:
    """Every module and subpackage under `root`, as dotted names relative to the package.

    Walks the files (pkgutil without importing), so discovery needs no backend.
    `__main__` modules count only when they declare `__all__`.
    """
    found = []
    for info in pkgutil.iter_modules([str(root)]):
        name = prefix + info.name
        if info.ispkg:
            found.append(name)
            found.extend(package_modules(root / info.name, name + "."))
        elif info.name != "__main__" or _has_all(root / "__main__.py"):
            found.append(name)
    return found


def api_path(module: str) -> str:
    """Docs path of a module's page: "" -> api/index.md, "convert.readers" ->
    api/convert/readers.md, "convert.__main__" -> api/convert/main.md."""
    if not module:
        return "api/index.md"
    return "api/" + module.replace(".__main__", ".main").replace(".", "/") + ".md"


def api_pages() -> dict:
    """{docs path: markdown} of the API reference, in nav order, and its nav."""
    modules = set(package_modules())
    listed = [m for _, members in API_SECTIONS for m in members]
    unlisted = sorted(modules - set(listed))
    # A `__main__` is documented only when it declares __all__ (package_modules).
    stale = sorted(set(listed) - modules - {m for m in listed if m.endswith("__main__")})
    if unlisted or stale:
        raise PluginError(
            "docs/hooks/site.py API_SECTIONS does not match the package: "
            + (f"modules without a section (add them): {unlisted}. " if unlisted else "")
            + (f"listed modules that do not exist (remove them): {stale}." if stale
               else ""))
    pages = {api_path(""): (
        f"# API reference\n\n"
        f"One page per module of `{PACKAGE}`, grouped in the navigation. This page: "
        f"the names the package itself re-exports, the ones most programs need "
        f"(`import {PACKAGE}`, then `{PACKAGE}.InceptionV3`, "
        f"`{PACKAGE}.transfer.freeze_stem`, ...).\n\n"
        f"::: {PACKAGE}\n"
        f"    options:\n"
        f"      show_root_heading: false\n"
        f"      heading_level: 2\n"
        f"      show_submodules: false\n")}
    nav = [api_path("")]
    for title, members in API_SECTIONS:
        section = []
        for module in (m for m in members if m in modules):
            path = api_path(module)
            pages[path] = f"::: {PACKAGE}.{module}\n"
            section.append({module: path})
        nav.append({title: section})
    return pages, nav


_model_pages = None


def model_pages() -> dict:
    """`_gen.model_pages.model_pages()`, once per build (it builds the real models)."""
    global _model_pages
    if _model_pages is None:
        pages = _import_gen("model_pages").model_pages()
        if "models/index.md" not in pages or not all(
                p.startswith("models/") and p.endswith(".md") for p in pages):
            raise PluginError("model_pages() must return {'models/<name>.md': markdown} "
                              f"including models/index.md; got {sorted(pages)}")
        _model_pages = dict(pages)
    return _model_pages


def _expand_nav(nav, title, pages):
    for i, item in enumerate(nav):
        if isinstance(item, dict) and title in item:
            nav[i] = {title: pages}
            return
    raise PluginError(f"mkdocs.yml nav has no '{title}' entry for docs/hooks/site.py to fill")


def on_config(config):
    global _model_pages
    _model_pages = None   # `mkdocs serve` rebuilds: regenerate from the current code
    models = model_pages()
    _, api_nav = api_pages()
    _expand_nav(config.nav, "Models",
                ["models/index.md"] + [p for p in models if p != "models/index.md"])
    _expand_nav(config.nav, "API reference", api_nav)
    return config


def on_files(files, config):
    api, _ = api_pages()
    for path, markdown in {**model_pages(), **api}.items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} is generated by docs/hooks/site.py: delete the "
                              f"hand-written file")
        files.append(File.generated(config, path, content=markdown))
    return files


def expand_generators(markdown: str, where: str) -> str:
    """Replaces each `<!-- gen: NAME args -->` line (outside code fences) by its output."""
    generators = None
    lines, fence = [], None
    for lineno, line in enumerate(markdown.splitlines(keepends=True), 1):
        opening = FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
        match = GEN_LINE.match(line) if fence is None else None
        if not match:
            lines.append(line)
            continue
        if generators is None:
            generators = _import_gen("figures").GENERATORS
        try:
            name, *args = shlex.split(match["spec"])
        except ValueError as e:
            raise PluginError(f"{where}:{lineno}: bad gen line {line.strip()!r}: {e}")
        if name not in generators:
            raise PluginError(f"{where}:{lineno}: unknown generator {name!r}; "
                              f"known: {', '.join(sorted(generators))}")
        call = " ".join([name, *args])
        try:
            out = generators[name](*args)
        except Exception as e:
            raise PluginError(f"{where}:{lineno}: gen {call} failed: "
                              f"{type(e).__name__}: {e}") from e
        if not isinstance(out, str) or not out.strip():
            raise PluginError(f"{where}:{lineno}: gen {call} returned "
                              f"{type(out).__name__} {out!r:.60}, not Markdown")
        lines.append(out if out.endswith("\n") else out + "\n")
    return "".join(lines)


def on_page_markdown(markdown, page, config, files):
    return expand_generators(markdown, f"docs/{page.file.src_uri}")
