"""The download cache, against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from http_server import LocalHTTPServer, http_server  # noqa: F401 (fixture)
from keras_inception import download
from keras_inception.download import (
    ChecksumError, DownloadError, cache_dir, cached_or_build, fetch, file_hash)

DATA = os.urandom(300_000)  # spans several 64 KB server chunks
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache per test; never offline unless a test says so."""
    root = tmp_path / "cache"
    monkeypatch.setenv("KERAS_INCEPTION_CACHE", str(root))
    monkeypatch.delenv("KERAS_INCEPTION_OFFLINE", raising=False)
    # A proxy configured on a CI machine must not intercept 127.0.0.1.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    return root


def _entries(folder):
    """Files in a cache folder, leaving out the (permanent, empty) lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_download_verify_then_cache_hit_without_server(http_server, cache, monkeypatch):
    url = http_server.add_file("w/model.bin", DATA)
    path = fetch(url, sha256=SHA, md5=MD5, progress=False)
    assert path == str(cache / "downloads" / "model.bin")
    assert open(path, "rb").read() == DATA
    assert http_server.requests == ["/w/model.bin"]
    http_server.stop()
    assert fetch(url, sha256=SHA, progress=False) == path
    assert fetch(url, sha256_prefix=SHA[:10].upper(), progress=False) == path
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    assert fetch(url, sha256=SHA, progress=False) == path
    assert _entries(cache / "downloads") == ["model.bin"]


def test_filename_and_subdir(http_server, cache):
    url = http_server.add_file("weights.bin", DATA)
    path = fetch(url, sha256=SHA, filename="renamed.h5", subdir="a/b", progress=False)
    assert path == str(cache / "a" / "b" / "renamed.h5")


def test_progress_notice_on_stderr(http_server, capsys):
    url = http_server.add_file("p.bin", DATA)
    fetch(url, sha256=SHA)
    err = capsys.readouterr().err
    assert f"Downloading {url}" in err
    assert "\r" not in err  # not a terminal: no bar redraws


def test_wrong_hash_discards_download_then_good_fetch_works(http_server, cache):
    url = http_server.add_file("model.bin", DATA)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        fetch(url, sha256=wrong, progress=False)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.url, e.algorithm, e.expected, e.actual) == (url, "sha256", wrong, SHA)
    message = str(e)
    for part in (url, wrong, SHA, "discarded", "downloads it again"):
        assert part in message
    assert _entries(cache / "downloads") == []
    assert fetch(url, sha256=SHA, progress=False)
    assert len(http_server.requests) == 2


def test_wrong_md5_and_prefix(http_server):
    url = http_server.add_file("model.bin", DATA)
    with pytest.raises(ChecksumError, match="md5"):
        fetch(url, sha256=SHA, md5="f" * 32, progress=False)
    with pytest.raises(ChecksumError, match="starting with 00000000"):
        fetch(url, sha256_prefix="00000000", progress=False)


@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_corrupt_cached_file_is_moved_aside_and_downloaded_again(http_server, cache,
                                                                 damage):
    url = http_server.add_file("model.bin", DATA)
    path = fetch(url, sha256=SHA, progress=False)
    with open(path, "r+b") as f:
        if damage == "truncate":  # e.g. a crash of a tool that wrote in place
            f.truncate(1000)
        else:  # same size, other bytes: only the hash can tell
            f.write(b"\0" * 16)
    with pytest.warns(UserWarning, match="failed verification.*Downloading it again"):
        assert fetch(url, sha256=SHA, progress=False) == path
    assert open(path, "rb").read() == DATA
    assert len(http_server.requests) == 2
    assert _entries(cache / "downloads") == ["model.bin", "model.bin.corrupt"]


def test_corrupt_cached_file_offline_is_never_used(http_server, cache, monkeypatch):
    url = http_server.add_file("model.bin", DATA)
    path = fetch(url, sha256=SHA, progress=False)
    open(path, "wb").write(b"junk")
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    with pytest.warns(UserWarning, match="moved to"):
        with pytest.raises(DownloadError, match="corrupt"):
            fetch(url, sha256=SHA, progress=False)
    assert not os.path.exists(path)


def test_server_down_message_and_manual_install(http_server, cache):
    url = http_server.add_file("model.bin", DATA)
    http_server.stop()
    with pytest.raises(DownloadError) as info:
        fetch(url, sha256=SHA, progress=False)
    e = info.value
    assert isinstance(e, OSError)
    target = str(cache / "downloads" / "model.bin")
    message = str(e)
    for part in (url, target, f"sha256 {SHA}"):
        assert part in message
    assert (e.url, e.path) == (url, target)
    assert _entries(cache / "downloads") == []
    # Following the message's instructions works without any network.
    with open(target, "wb") as f:
        f.write(DATA)
    assert fetch(url, sha256=SHA, progress=False) == target


def test_offline_env_never_touches_network(http_server, cache, monkeypatch):
    url = http_server.add_file("model.bin", DATA)
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        fetch(url, sha256_prefix=SHA[:8], progress=False)
    message = str(info.value)
    for part in ("KERAS_INCEPTION_OFFLINE", url, str(cache / "downloads" / "model.bin"),
                 f"sha256 starting with {SHA[:8]}"):
        assert part in message
    assert http_server.requests == []
    monkeypatch.setenv("KERAS_INCEPTION_OFFLINE", "0")
    assert fetch(url, sha256=SHA, progress=False)


def test_http_404(http_server, cache):
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        fetch(http_server.url("missing.bin"), sha256=SHA, progress=False)
    assert str(cache / "downloads" / "missing.bin") in str(info.value)
    assert _entries(cache / "downloads") == []


def test_redirects_are_followed(http_server, cache):
    http_server.add_file("real/location.bin", DATA)
    http_server.redirect("/hop.bin", "/real/location.bin", code=301)
    url = http_server.redirect("/published/model.bin", "/hop.bin")
    path = fetch(url, sha256=SHA, progress=False)
    # Named after the URL asked for, not where it redirected.
    assert path == str(cache / "downloads" / "model.bin")
    assert http_server.requests == ["/published/model.bin", "/hop.bin",
                                    "/real/location.bin"]


def test_connection_dropped_mid_file(http_server, cache):
    url = http_server.add_file("model.bin", DATA)
    http_server.truncate["/model.bin"] = 100_000
    with pytest.raises(DownloadError, match="after 100000 of 300000 bytes"):
        fetch(url, sha256=SHA, progress=False)
    assert _entries(cache / "downloads") == []
    del http_server.truncate["/model.bin"]
    assert open(fetch(url, sha256=SHA, progress=False), "rb").read() == DATA


def test_timeout(http_server, cache):
    url = http_server.add_file("model.bin", DATA)
    http_server.gate.clear()  # accepts, never answers
    try:
        with pytest.raises(DownloadError, match="timed out"):
            fetch(url, sha256=SHA, progress=False, timeout=0.3)
    finally:
        http_server.gate.set()
    assert _entries(cache / "downloads") == []


def test_leftover_partial_downloads_are_removed(http_server, cache):
    url = http_server.add_file("model.bin", DATA)
    folder = cache / "downloads"
    folder.mkdir(parents=True)
    (folder / "model.bin.0123456789ab.part").write_bytes(b"dead process")
    (folder / "other.bin.0123456789ab.part").write_bytes(b"not ours to judge")
    fetch(url, sha256=SHA, progress=False)
    assert _entries(folder) == ["model.bin", "other.bin.0123456789ab.part"]


def test_no_hash_uses_file_as_found(http_server):
    url = http_server.add_file("model.bin", DATA)
    path = fetch(url, progress=False)
    http_server.stop()
    assert fetch(url, progress=False) == path


@pytest.mark.parametrize("kwargs, match", [
    ({"sha256": "abc"}, "64"),
    ({"md5": "z" * 32}, "hexadecimal"),
    ({"sha256_prefix": "abcd"}, "8 to 64"),
    ({"sha256": SHA, "filename": "../evil"}, "plain file name"),
    ({"sha256": SHA, "subdir": "../up"}, "plain file name"),
])
def test_bad_arguments(http_server, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fetch(http_server.url("model.bin"), progress=False, **kwargs)
    assert http_server.requests == []


def test_url_without_file_name():
    with pytest.raises(ValueError, match="filename="):
        fetch("http://127.0.0.1:9/", progress=False)


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_INCEPTION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / ".keras" / "keras_inception")
    assert os.path.isdir(cache_dir())


def test_file_hash(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert file_hash(path) == SHA
    assert file_hash(str(path), "md5") == MD5


def test_threads_download_once(cache):
    # A slow server: the threads overlap; the lock makes all but one wait.
    with LocalHTTPServer(cache.parent / "root", chunk_delay=0.02) as server:
        url = server.add_file("model.bin", DATA)
        paths = []
        threads = [threading.Thread(target=lambda: paths.append(
            fetch(url, sha256=SHA, progress=False))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(paths) == 3 and len(set(paths)) == 1
        assert server.requests == ["/model.bin"]
        assert file_hash(paths[0]) == SHA


_CHILD = """
import importlib.util, sys
# Loaded by path: importing the package would import Keras (slow, needless here).
spec = importlib.util.spec_from_file_location("ki_download", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.fetch(sys.argv[2], sha256=sys.argv[3], progress=True))
"""


def test_two_processes_download_once(http_server, cache, tmp_path):
    url = http_server.add_file("model.bin", DATA)
    env = dict(os.environ)  # carries the fixture's cache and no_proxy settings
    args = [sys.executable, "-c", _CHILD, download.__file__, url, SHA]

    def start(name):
        err = open(tmp_path / f"{name}.err", "w+")
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True), err

    http_server.gate.clear()  # the first download stalls inside the server...
    first, first_err = start("first")
    try:
        assert http_server.wait_for_requests(1), "first process never connected"
        second, second_err = start("second")  # ...while it holds the lock
        deadline = time.monotonic() + 30
        while "Waiting for another process" not in (tmp_path / "second.err").read_text():
            assert second.poll() is None, (tmp_path / "second.err").read_text()
            assert time.monotonic() < deadline, "second process never waited"
            time.sleep(0.05)
    finally:
        http_server.gate.set()
    outputs = [p.communicate(timeout=60)[0].strip() for p in (first, second)]
    for p, err in ((first, first_err), (second, second_err)):
        err.seek(0)
        assert p.returncode == 0, err.read()
        err.close()
    target = str(cache / "downloads" / "model.bin")
    assert outputs == [target, target]
    assert http_server.requests == ["/model.bin"]
    assert file_hash(target) == SHA
    assert _entries(cache / "downloads") == ["model.bin"]


def test_cached_or_build_builds_once(cache):
    calls = []

    def build(path):
        calls.append(path)
        assert path.endswith("src-1234.weights.h5") and not os.path.exists(path)
        with open(path, "wb") as f:
            f.write(b"converted")

    path = cached_or_build("src-1234", build)
    assert path == str(cache / "converted" / "src-1234.weights.h5")
    assert open(path, "rb").read() == b"converted"
    assert cached_or_build("src-1234", build) == path
    assert len(calls) == 1
    assert _entries(cache / "converted") == ["src-1234.weights.h5"]


def test_cached_or_build_with_keras_save_weights(cache):
    import keras  # save_weights insists on a path ending in .weights.h5

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    path = cached_or_build("tiny", model.save_weights)
    clone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    clone.load_weights(path)
    assert all((a == b).all() for a, b in zip(model.get_weights(), clone.get_weights()))


def test_cached_or_build_failure_leaves_nothing(cache):
    def half_then_fail(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise KeyError("conversion broke")

    with pytest.raises(KeyError, match="conversion broke"):
        cached_or_build("src-1234", half_then_fail)
    assert _entries(cache / "converted") == []
    with pytest.raises(RuntimeError, match="without writing"):
        cached_or_build("src-1234", lambda path: None)
    assert _entries(cache / "converted") == []
    path = cached_or_build("src-1234", lambda p: open(p, "wb").write(b"ok"))
    assert open(path, "rb").read() == b"ok"


def test_cached_or_build_threads_build_once(cache):
    calls = []

    def slow_build(path):
        calls.append(path)
        time.sleep(0.2)
        with open(path, "wb") as f:
            f.write(b"x")

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        cached_or_build("k", slow_build, suffix=".bin"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 3 and len(set(results)) == 1
    assert len(calls) == 1
