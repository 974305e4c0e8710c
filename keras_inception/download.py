"""Downloading pretrained weights into a local cache: verified, atomic, shared.

Every file lands in the cache only after its checksum matched, by an atomic
rename from a temporary file in the same folder, so an interrupted download never
leaves a half file under the real name. Processes that fetch the same file at once
take turns through a lock file (``<file>.lock``), so it is downloaded once. A file
that is already cached is hashed again on every use and never trusted blindly: a
damaged one is moved aside and fetched anew.

Environment variables:

* ``KERAS_INCEPTION_CACHE``: the cache folder (default ``~/.keras/keras_inception``).
* ``KERAS_INCEPTION_OFFLINE=1``: never use the network; cached files still work,
  and a missing one raises :class:`DownloadError` saying where to put it by hand.

This module uses the standard library only (no Keras import), so it is cheap to
import and usable from helper scripts.

Example (a ``file://`` URL, so it runs offline):

>>> import os, pathlib, tempfile
>>> from unittest import mock
>>> with tempfile.TemporaryDirectory() as tmp:
...     source = pathlib.Path(tmp, "weights.bin")
...     _ = source.write_bytes(b"not really weights")
...     digest = file_hash(source)
...     with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": tmp + "/cache"}):
...         path = fetch(source.as_uri(), sha256=digest, progress=False)
...         again = fetch(source.as_uri(), sha256=digest, progress=False)
...     (os.path.relpath(path, tmp), path == again)
('cache/downloads/weights.bin', True)
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Callable, Iterator, List, NamedTuple, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; see _locked.
    fcntl = None

__all__ = [
    "ChecksumError", "DownloadError", "cache_dir", "cached_or_build", "fetch",
    "file_hash",
]

ENV_CACHE = "KERAS_INCEPTION_CACHE"
ENV_OFFLINE = "KERAS_INCEPTION_OFFLINE"
DEFAULT_TIMEOUT = 30.0  # seconds per socket operation, not for the whole file
_CHUNK = 1 << 20
_PART = ".part"  # suffix of in-flight downloads
_BUILD = ".tmp"  # suffix of cached_or_build's work folders
_USER_AGENT = "keras-inception (python urllib)"
_HEX_LENGTHS = {"sha256": 64, "md5": 32}


class ChecksumError(ValueError):
    """A downloaded file does not have the expected hash; it was discarded.

    Attributes:
        url: the URL downloaded.
        algorithm: ``"sha256"`` or ``"md5"``.
        expected: the expected hex digest (or its prefix).
        actual: the hex digest of what arrived.

    Example:
        >>> import os, pathlib, tempfile
        >>> from unittest import mock
        >>> from keras_inception.download import ChecksumError, fetch
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     source = pathlib.Path(tmp, "w.bin")
        ...     _ = source.write_bytes(b"abc")
        ...     with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": tmp}):
        ...         try:
        ...             fetch(source.as_uri(), md5="0" * 32, progress=False)
        ...         except ChecksumError as err:
        ...             print(err.algorithm, err.actual)
        md5 900150983cd24fb0d6963f7d28e17f72
    """

    def __init__(self, message: str, *, url: str, algorithm: str, expected: str,
                 actual: str):
        super().__init__(message)
        self.url = url
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class DownloadError(OSError):
    """A file could not be downloaded (offline, unreachable, HTTP error).

    The message says where to put the file by hand and which hash it must have.

    Attributes:
        url: the URL tried.
        path: where the cache expects the file.

    Example:
        >>> import os, tempfile
        >>> from unittest import mock
        >>> from keras_inception.download import DownloadError, fetch
        >>> with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {
        ...         "KERAS_INCEPTION_CACHE": tmp, "KERAS_INCEPTION_OFFLINE": "1"}):
        ...     try:
        ...         fetch("https://example.com/w.h5", progress=False)
        ...     except DownloadError as err:
        ...         print(err.url, os.path.basename(err.path))
        https://example.com/w.h5 w.h5
    """

    def __init__(self, message: str, *, url: str, path: str):
        super().__init__(message)  # one argument: str(e) is the message itself
        self.url = url
        self.path = path


class _Expected(NamedTuple):
    algorithm: str
    digest: str  # lower-case hex; a prefix when is_prefix
    is_prefix: bool

    def describe(self) -> str:
        if self.is_prefix:
            return f"a {self.algorithm} starting with {self.digest}"
        return f"{self.algorithm} {self.digest}"

    def matches(self, actual: str) -> bool:
        return actual.startswith(self.digest) if self.is_prefix else actual == self.digest


def cache_dir() -> str:
    """Returns the cache folder, creating it if needed.

    ``$KERAS_INCEPTION_CACHE`` if set, else ``~/.keras/keras_inception``.

    Returns:
        The absolute path of the folder.

    Example:

    >>> import os, tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": tmp + "/c"}):
    ...         path = cache_dir()
    ...     (path == os.path.join(tmp, "c"), os.path.isdir(path))
    (True, True)
    """
    path = os.environ.get(ENV_CACHE) or os.path.join("~", ".keras", "keras_inception")
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


def file_hash(path, algorithm: str = "sha256") -> str:
    """Returns the hex digest of a file, read in chunks.

    Args:
        path: the file.
        algorithm: any name ``hashlib.new`` accepts (``"sha256"``, ``"md5"``).

    Returns:
        The lower-case hex digest.

    Example:

    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "hello.txt")
    ...     with open(path, "wb") as f:
    ...         _ = f.write(b"hello\\n")
    ...     file_hash(path, "md5")
    'b1946ac92492d2347c6235b4d2611184'
    """
    return _hash_file(path, [algorithm])[algorithm]


def _hash_file(path, algorithms) -> dict:
    hashers = {a: hashlib.new(a) for a in set(algorithms)}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            for h in hashers.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _expected_hashes(sha256, md5, sha256_prefix) -> List[_Expected]:
    found = []
    for algorithm, value, is_prefix in (("sha256", sha256, False), ("md5", md5, False),
                                        ("sha256", sha256_prefix, True)):
        if value is None:
            continue
        digest = str(value).strip().lower()
        name = "sha256_prefix" if is_prefix else algorithm
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{name}={value!r} is not a hexadecimal digest.")
        length = _HEX_LENGTHS[algorithm]
        if is_prefix and not 8 <= len(digest) <= length:
            raise ValueError(f"sha256_prefix={value!r} must have 8 to {length} hex "
                             f"digits (fewer would not protect against a wrong file).")
        if not is_prefix and len(digest) != length:
            raise ValueError(f"{name}={value!r} has {len(digest)} hex digits; a {name} "
                             f"digest has {length}.")
        found.append(_Expected(algorithm, digest, is_prefix))
    return found


def _mismatches(actual: dict, expected: List[_Expected]) -> List[str]:
    return [f"expected {e.describe()}, got {e.algorithm} {actual[e.algorithm]}"
            for e in expected if not e.matches(actual[e.algorithm])]


def _check_name(name: str, what: str) -> str:
    if (not name or name in (".", "..") or "\0" in name or "/" in name
            or os.sep in name or (os.altsep and os.altsep in name)):
        raise ValueError(f"{what} {name!r} is not a plain file name.")
    return name


def _cache_subdir(subdir: str) -> str:
    parts = str(subdir).replace(os.sep, "/").split("/")
    for part in parts:
        _check_name(part, "subdir component")  # no absolute paths, no '..'
    return os.path.join(cache_dir(), *parts)


def _name_from_url(url: str) -> str:
    name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
    if not name:
        raise ValueError(f"Cannot tell a file name from the URL {url!r}; pass filename=.")
    return name


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _locked(target: str, announce: bool) -> Iterator[bool]:
    """Holds an exclusive lock on ``<target>.lock``; yields whether it is held.

    The lock file is never deleted: unlinking it while another process waits on
    it would let a third process lock a fresh file, and two would run at once.
    Without flock (Windows, some network file systems) this runs unlocked: the
    atomic rename still keeps the cache consistent, at worst two processes both
    download the same file.
    """
    if fcntl is None:
        yield False
        return
    with open(target + ".lock", "ab") as handle:  # "a": never truncates
        held = True
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if announce:
                print(f"Waiting for another process to finish {target} ...",
                      file=sys.stderr, flush=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on NFS: proceed unlocked, as on Windows
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(folder: str, pattern: str) -> None:
    # Only called with the target's lock held: every writer of these names holds
    # that lock, so any match was left by a process that died mid-way.
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def _manual_message(url: str, target: str, expected: List[_Expected], reason: str) -> str:
    lines = [
        f"Could not download {url}: {reason}.",
        "To install the file by hand, download that URL elsewhere and copy it to",
        f"    {target}",
    ]
    if expected:
        tools = " / ".join(sorted({e.algorithm + "sum" for e in expected}))
        lines.append("It must have " + " and ".join(e.describe() for e in expected)
                     + f" (check with {tools}); it is verified before use.")
    else:
        lines.append("No checksum is known for this file: it is used as found.")
    lines.append(f"(The cache folder is set by {ENV_CACHE}; {ENV_OFFLINE}=1 forbids "
                 f"any network access.)")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Progress:
    """A one-line bar on stderr, redrawn at most ten times a second.

    Drawn only when stderr is a terminal: in logs and CI a bar is noise, so there
    only the one-line "Downloading ..." notice appears.
    """

    def __init__(self, label: str, total: Optional[int], enabled: bool):
        isatty = getattr(sys.stderr, "isatty", None)
        self.live = bool(enabled and isatty and isatty())
        self.label, self.total, self.drawn = label, total, 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.live or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "=" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {frac:4.0%} {_size(done)}/{_size(self.total)}"
        else:
            text = f"{self.label} {_size(done)}"
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

    def close(self, done: int) -> None:
        if self.live:
            self.update(done, final=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def _download(url: str, target: str, expected: List[_Expected], progress: bool,
              timeout: float) -> None:
    folder, name = os.path.split(target)

    def fail(reason, cause):
        raise DownloadError(_manual_message(url, target, expected, reason),
                            url=url, path=target) from cause

    if progress:
        print(f"Downloading {url} to {target}", file=sys.stderr, flush=True)
    # O_EXCL with mode 0o666 (not mkstemp's 0o600): the cached file gets the
    # user's usual permissions, so a shared cache stays readable.
    tmp = os.path.join(folder, f"{name}.{os.urandom(6).hex()}{_PART}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        hashers = {e.algorithm: hashlib.new(e.algorithm) for e in expected}
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            try:
                # urlopen follows up to 10 HTTP redirects by itself.
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as e:
                e.close()  # it holds the error page's open connection
                fail(f"the server answered HTTP {e.code} {e.reason}", e)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                fail(f"{getattr(e, 'reason', None) or e} (offline, or the host is "
                     f"unreachable?)", e)
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = _Progress(name, total, progress)
                done = 0
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as e:
                        fail(f"the connection failed after {done} bytes ({e})", e)
                    if not block:
                        break
                    out.write(block)  # disk errors propagate as themselves
                    for h in hashers.values():
                        h.update(block)
                    done += len(block)
                    bar.update(done)
                bar.close(done)
            if total is not None and done != total:
                fail(f"the connection closed after {done} of {total} bytes", None)
            out.flush()
            os.fsync(out.fileno())  # the rename must never publish unwritten data
        actual = {a: h.hexdigest() for a, h in hashers.items()}
        bad = _mismatches(actual, expected)
        if bad:
            e = next(e for e in expected if not e.matches(actual[e.algorithm]))
            raise ChecksumError(
                f"The download of {url} does not match its checksum: "
                + "; ".join(bad) + f". The download was discarded (nothing was "
                f"written to {target}); the next call downloads it again. If this "
                f"repeats, the file on the server changed or the expected hash is wrong.",
                url=url, algorithm=e.algorithm, expected=e.digest,
                actual=actual[e.algorithm])
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def fetch(url: str, *, sha256: Optional[str] = None, md5: Optional[str] = None,
          sha256_prefix: Optional[str] = None, filename: Optional[str] = None,
          subdir: str = "downloads", progress: bool = True,
          timeout: float = DEFAULT_TIMEOUT) -> str:
    """Returns the local path of a verified copy of ``url``, downloading if needed.

    The file lives at ``<cache_dir()>/<subdir>/<filename>``. A cached file that
    verifies is returned without any network access. Otherwise the file is
    downloaded (redirects followed) into a temporary file beside it, hashed while
    streaming, and renamed into place only if every given hash matches. A cached
    file that fails verification is moved to ``<file>.corrupt`` with a warning and
    downloaded again. Concurrent fetches of one file (threads or processes) take
    turns through ``<file>.lock``, so it is downloaded once.

    Args:
        url: an ``http(s)://`` (or ``file://``) URL.
        sha256: the expected SHA-256, 64 hex digits.
        md5: the expected MD5, 32 hex digits.
        sha256_prefix: the first hex digits (at least 8) of the expected SHA-256,
            as published in file names like torch hub's.
        filename: the cached file's name; by default the URL's last path segment.
        subdir: the folder under the cache, e.g. ``"downloads"``.
        progress: print a notice, and on a terminal a progress bar, to stderr.
            The bar is drawn only when stderr is a TTY.
        timeout: seconds any single socket operation may take.

    Without any hash, a cached file is used as found (downloads are still atomic).

    Returns:
        The path of the verified local file.

    Raises:
        ChecksumError: the download does not match the hash (it was discarded).
        DownloadError: offline, unreachable host, timeout, HTTP error, connection
            lost, or ``KERAS_INCEPTION_OFFLINE`` set; the message gives the exact
            path to put the file by hand and its hash.
        ValueError: malformed hash, file name or URL.

    Example:

    >>> import os, pathlib, tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     source = pathlib.Path(tmp, "w.bin")
    ...     _ = source.write_bytes(b"abc")
    ...     with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": tmp}):
    ...         path = fetch(source.as_uri(), sha256_prefix="ba7816bf",
    ...                      filename="abc.bin", subdir="demo", progress=False)
    ...     os.path.relpath(path, tmp)
    'demo/abc.bin'
    """
    expected = _expected_hashes(sha256, md5, sha256_prefix)
    algorithms = [e.algorithm for e in expected]
    name = _check_name(filename if filename is not None else _name_from_url(url),
                       "filename")
    folder = _cache_subdir(subdir)
    target = os.path.join(folder, name)

    def verified() -> Optional[List[str]]:
        """None if missing; [] if it verifies; else the mismatches."""
        if not os.path.isfile(target):
            return None
        return _mismatches(_hash_file(target, algorithms), expected) if expected else []

    # Files appear only by atomic rename, so a present file is complete: the
    # common case needs neither the lock nor write access to the cache.
    if verified() == []:
        return target
    os.makedirs(folder, exist_ok=True)
    with _locked(target, announce=progress) as held:
        if held:
            _remove_leftovers(folder, glob.escape(name) + ".*" + _PART)
        bad = verified()
        if bad == []:  # another process finished it while we waited
            return target
        note = ""
        if bad is not None:
            aside = target + ".corrupt"
            os.replace(target, aside)
            note = (f"The cached file {target} failed verification ({'; '.join(bad)}); "
                    f"it was moved to {aside} and is not used.")
            warnings.warn(note + (" Downloading it again." if not _offline() else ""),
                          stacklevel=2)
        if _offline():
            message = _manual_message(
                url, target, expected,
                f"{ENV_OFFLINE}={os.environ.get(ENV_OFFLINE)!r} forbids network access")
            raise DownloadError(message + ("\n" + note if note else ""), url=url,
                                path=target)
        _download(url, target, expected, progress, timeout)
    return target


def cached_or_build(key: str, build_fn: Callable[[str], object], *,
                    subdir: str = "converted", suffix: str = ".weights.h5") -> str:
    """Returns ``<cache_dir()>/<subdir>/<key><suffix>``, building it once if missing.

    For files derived from downloads (e.g. weights converted to our layout), keyed
    by something that changes whenever the result would, such as the source's
    hash. ``build_fn(path)`` must write the file at ``path``: a fresh path in a
    private temporary folder, ending in ``<key><suffix>`` (so Keras'
    ``save_weights``, which insists on ``.weights.h5``, accepts it). The result is
    renamed into place atomically; if ``build_fn`` raises, nothing is left behind
    and the error propagates. Concurrent callers take turns through a lock file, so
    the file is built once.

    Args:
        key: a plain file name stem, e.g. ``"inception_v3-<sha256>"``.
        build_fn: called with the temporary path to write.
        subdir: the folder under the cache.
        suffix: appended to ``key``.

    Returns:
        The path of the cached file.

    Raises:
        RuntimeError: ``build_fn`` returned without writing the file.

    Example:

    >>> import os, tempfile
    >>> from unittest import mock
    >>> def build(path):
    ...     with open(path, "w") as f:
    ...         _ = f.write("converted")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with mock.patch.dict(os.environ, {"KERAS_INCEPTION_CACHE": tmp}):
    ...         path = cached_or_build("demo-1234", build, suffix=".txt")
    ...         again = cached_or_build("demo-1234", None, suffix=".txt")  # cached
    ...     (os.path.relpath(path, tmp), again == path)
    ('converted/demo-1234.txt', True)
    """
    name = _check_name(f"{key}{suffix}", "key + suffix")
    folder = _cache_subdir(subdir)
    target = os.path.join(folder, name)
    if os.path.isfile(target):  # complete: it only appears by atomic rename
        return target
    os.makedirs(folder, exist_ok=True)
    with _locked(target, announce=True) as held:
        if held:
            _remove_leftovers(folder, "." + glob.escape(name) + ".*" + _BUILD)
        if os.path.isfile(target):
            return target
        work = tempfile.mkdtemp(prefix=f".{name}.", suffix=_BUILD, dir=folder)
        try:
            tmp = os.path.join(work, name)
            build_fn(tmp)
            if not os.path.isfile(tmp):
                raise RuntimeError(f"build_fn {build_fn!r} returned without writing "
                                   f"{tmp}; nothing was cached for {target}.")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
