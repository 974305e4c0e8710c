"""The documentation's code is tested: a tutorial that does not run is a bug.

Every ```python block of every hand-written page under ``docs/`` runs here, on the
backend of this pytest process, the blocks of one page in order in one namespace
(as a reader runs them in a notebook), in a fresh working folder with a fresh
weights cache. Shell blocks are checked too: every ``python recipes/NAME.py ...``
command line must parse with that recipe's own argument parser.

A page may declare what its code needs in one HTML comment (invisible on the site)::

    <!-- docs-test
    replace: OLD -> NEW            test-only edit of the page's code (must match)
    weights: MODEL/TAG             serve random-init weights for that registry entry
                                   on 127.0.0.1: download, hash check, conversion and
                                   cache run for real
    image: NAME.jpg                a generated photo-like JPEG in the working folder
    flowers: DIR [PER_CLASS [SIZE]]  a generated 5-class image folder
    upstream: FILE MODEL FORMAT LAYOUT   a random-init upstream checkpoint file
    env: NAME=VALUE                an environment variable for the page
    -->
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import pathlib
import re
import shlex
import shutil
from typing import Dict, List, Tuple

import keras
import pytest

import keras_inception
from keras_inception import download, pretrained
from keras_inception.data import synthetic_flowers
from http_server import LocalHTTPServer
from upstream_files import write_upstream

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RECIPES = ROOT / "recipes"
PYTHON = ("python", "py")
PYCON = ("pycon",)
SHELL = ("bash", "sh", "shell", "console")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)(?P<info>.*)$")
_DIRECTIVE = re.compile(r"<!--\s*docs-test\b(?P<body>.*?)-->", re.S)


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the first code line in the page


def parse_blocks(text: str) -> List[Block]:
    """Fenced code blocks, dedented by their fence's indentation (admonitions, tabs)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        body, j = [], i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        else:
            raise ValueError(f"unclosed code fence opened at line {i + 1}")
        blocks.append(Block(m["lang"].lower(), "\n".join(body) + "\n", i + 2))
        i = j + 1
    return blocks


def parse_directives(text: str) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    known = ("replace", "weights", "image", "flowers", "upstream", "env")
    for m in _DIRECTIVE.finditer(text):
        for raw in m["body"].splitlines():
            raw = raw.strip()
            if not raw:
                continue
            key, sep, value = raw.partition(":")
            if not sep or key.strip() not in known:
                raise ValueError(f"unknown docs-test directive {raw!r}; known: {known}")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _pages() -> List[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_gen" not in p.relative_to(DOCS).parts)


def _page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(DOCS).with_suffix(""))


PAGES = _pages()
CODE_PAGES = [p for p in PAGES
              if any(b.lang in PYTHON + PYCON for b in parse_blocks(p.read_text()))]
SHELL_PAGES = [p for p in PAGES
               if any(b.lang in SHELL for b in parse_blocks(p.read_text()))]


# --- the page's environment ---------------------------------------------------------
def _publish_weights(spec: str, server, monkeypatch, workdir) -> None:
    model, _, tag = spec.partition("/")
    entry = keras_inception.get_weights_entry(model, tag)
    source = pathlib.Path(workdir) / "published" / entry.filename
    source.parent.mkdir(parents=True, exist_ok=True)
    write_upstream(source, model, entry.format, entry.layout, **dict(entry.model_kwargs))
    url = server.add_file(f"{model}/{tag}/{source.name}", source.read_bytes())
    local = dataclasses.replace(
        entry, url=url, notop_url=None, notop_md5=None, sha256_prefix=None,
        md5=download.file_hash(source, "md5") if entry.md5 else None,
        sha256=download.file_hash(source, "sha256"))
    monkeypatch.setitem(pretrained.WEIGHTS[entry.model], entry.tag, local)


def _photo(path: pathlib.Path, scratch: pathlib.Path) -> None:
    folder = synthetic_flowers(scratch / "photo", classes=2, per_class=2, size=299, seed=3)
    first = sorted(pathlib.Path(folder).rglob("*.jpg"))[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first, path)


def _flowers(spec: str, cwd: pathlib.Path, scratch: pathlib.Path) -> None:
    target, *rest = spec.split()
    per_class = int(rest[0]) if rest else 6
    size = int(rest[1]) if len(rest) > 1 else 96
    folder = synthetic_flowers(scratch / "flowers", per_class=per_class, size=size)
    shutil.copytree(folder, cwd / target)


def _prepare(directives, monkeypatch, cwd: pathlib.Path, scratch: pathlib.Path, server):
    monkeypatch.delenv(download.ENV_OFFLINE, raising=False)
    monkeypatch.setenv(download.ENV_CACHE, str(scratch / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for spec in directives.get("env", []):
        name, _, value = spec.partition("=")
        monkeypatch.setenv(name.strip(), value.strip())
    for spec in directives.get("weights", []):
        _publish_weights(spec, server, monkeypatch, scratch)
    for spec in directives.get("image", []):
        _photo(cwd / spec, scratch)
    for spec in directives.get("flowers", []):
        _flowers(spec, cwd, scratch)
    for spec in directives.get("upstream", []):
        file, model, fmt, layout = spec.split()
        write_upstream(cwd / file, model, fmt, layout)


def _replacements(directives) -> List[Tuple[str, str]]:
    pairs = []
    for spec in directives.get("replace", []):
        old, sep, new = spec.partition(" -> ")
        if not sep:
            raise ValueError(f"replace: needs 'OLD -> NEW', got {spec!r}")
        pairs.append((old, new))
    return pairs


def _run_block(block: Block, namespace: dict, filename: str) -> None:
    if block.lang in PYCON:
        test = doctest.DocTestParser().get_doctest(block.code, namespace, filename,
                                                   filename, block.line - 1)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        out = []
        runner.run(test, out=out.append, clear_globs=False)
        assert not runner.failures, "".join(out)
        return
    # Leading newlines make tracebacks point at the page's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, filename, "exec")
    exec(code, namespace)


@pytest.fixture
def server(tmp_path):
    with LocalHTTPServer(str(tmp_path / "served")) as s:
        yield s


@pytest.mark.parametrize("page", CODE_PAGES, ids=_page_id)
def test_page_code_runs(page, tmp_path, monkeypatch, server):
    text = page.read_text()
    directives = parse_directives(text)
    blocks = [b for b in parse_blocks(text) if b.lang in PYTHON + PYCON]
    pairs = _replacements(directives)
    for old, new in pairs:
        hits = sum(b.code.count(old) for b in blocks)
        assert hits, f"{page.name}: 'replace: {old} -> ...' matches no code: update it"
        for b in blocks:
            b.code = b.code.replace(old, new)
    cwd, scratch = tmp_path / "work", tmp_path / "scratch"
    cwd.mkdir()
    scratch.mkdir()
    _prepare(directives, monkeypatch, cwd, scratch, server)
    monkeypatch.chdir(cwd)
    namespace = {"__name__": "__main__"}
    policy, data_format = keras.config.dtype_policy(), keras.config.image_data_format()
    try:
        for block in blocks:
            _run_block(block, namespace, str(page.relative_to(ROOT)))
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_image_data_format(data_format)
        if "matplotlib.pyplot" in __import__("sys").modules:
            __import__("matplotlib.pyplot").pyplot.close("all")


# --- shell blocks: recipe command lines must parse ----------------------------------
def _commands(code: str) -> List[str]:
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    lines = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        line = line.split(" #", 1)[0]
        for part in re.split(r"&&|\|\||;", line):
            if "recipes/" in part and ".py" in part:
                lines.append(part.strip())
    return lines


def _recipe_parser(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_recipe_{name}",
                                                  RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._parser()


def recipe_arguments(command: str) -> Tuple[str, List[str]]:
    """``KERAS_BACKEND=jax python recipes/x.py --a 1`` -> ("x", ["--a", "1"])."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        m = re.fullmatch(r"(?:.*/)?recipes/(\w+)\.py", word)
        if m:
            return m[1], words[i + 1:]
    raise ValueError(f"no recipe in {command!r}")


@pytest.mark.parametrize("page", SHELL_PAGES, ids=_page_id)
def test_page_recipe_commands_parse(page, capsys):
    checked = 0
    for block in parse_blocks(page.read_text()):
        if block.lang not in SHELL:
            continue
        for command in _commands(block.code):
            name, argv = recipe_arguments(command)
            assert (RECIPES / f"{name}.py").is_file(), f"{page.name}: no recipe {name}"
            try:
                _recipe_parser(name).parse_args(argv)
            except SystemExit:
                pytest.fail(f"{page.name} line {block.line}: {command!r} does not parse: "
                            f"{capsys.readouterr().err.strip()}")
            checked += 1
    if "recipes/" in page.read_text():
        assert checked or "```" not in page.read_text(), page.name


# --- the harness itself -------------------------------------------------------------
def test_every_tutorial_has_executed_code():
    tutorials = [p for p in PAGES if p.parent.name == "tutorials"]
    tutorials.append(DOCS / "getting-started.md")
    missing = [p.name for p in tutorials if p.exists() and p not in CODE_PAGES]
    assert not missing, f"tutorials without a tested ```python block: {missing}"


def test_parser_reads_indented_fences_and_directives():
    text = ("Intro\n\n!!! note\n    ```python\n    x = 1\n        y = 2\n    ```\n\n"
            "=== \"tab\"\n\n    ```bash\n    python recipes/predict.py --help\n    ```\n"
            "<!-- docs-test\nreplace: a -> b\nenv: X=1\n-->\n")
    blocks = parse_blocks(text)
    assert [(b.lang, b.line) for b in blocks] == [("python", 5), ("bash", 12)]
    assert blocks[0].code == "x = 1\n    y = 2\n"
    assert parse_directives(text) == {"replace": ["a -> b"], "env": ["X=1"]}
    with pytest.raises(ValueError, match="unknown docs-test directive"):
        parse_directives("<!-- docs-test\nweight: x/y\n-->")
    with pytest.raises(ValueError, match="unclosed"):
        parse_blocks("```python\nx = 1\n")
    assert recipe_arguments("KERAS_BACKEND=jax .venv/bin/python recipes/x.py --a 1") == \
        ("x", ["--a", "1"])
    assert _commands("a && python recipes/y.py \\\n  --b 2  # note\n") == \
        ["python recipes/y.py --b 2"]
