"""`data.source: url`: downloaded once from a real (local) HTTP server, checked against its SHA-256."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
from train_utils import tiny_config, write_corpus

from albert_gpt.config import config_from_dict
from albert_gpt.data.pipeline import prepare_data
from albert_gpt.errors import ConfigError, DataError


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www that counts the GET requests it answers."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def _url_config(tmp_path, url, sha256=None, **data):
    return tiny_config(tmp_path, data={"source": "url", "url": url, "sha256": sha256, "path": None, **data})


def test_a_url_corpus_is_downloaded_once_verified_and_tokenized_like_the_file(tmp_path, server):
    root, base, hits = server
    corpus = write_corpus(root)
    digest = hashlib.sha256(corpus.read_bytes()).hexdigest()
    cfg = _url_config(tmp_path, f"{base}/corpus.txt", digest)
    first = prepare_data(cfg, progress=False)
    assert hits == ["/corpus.txt"]
    downloads = list((tmp_path / "cache" / "downloads").iterdir())
    assert [p.name for p in downloads] == [f"{digest[:16]}-corpus.txt"]  # no temporary file left
    assert downloads[0].read_bytes() == corpus.read_bytes()
    as_file = prepare_data(tiny_config(tmp_path / "f", data={"path": str(corpus)}), progress=False)
    for split in ("train", "val", "test"):
        assert np.array_equal(first.splits[split].tokens, as_file.splits[split].tokens)
    again = prepare_data(_url_config(tmp_path, f"{base}/corpus.txt", digest), progress=False)
    assert hits == ["/corpus.txt"] and again.cache_dir == first.cache_dir  # cached: no second download
    # a local copy stands in for the download (no network) when its checksum matches, same cache entry
    local = prepare_data(
        _url_config(tmp_path, "http://127.0.0.1:9/unreachable.txt", digest, path=str(corpus)), progress=False
    )
    assert local.cache_dir == first.cache_dir


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path, server):
    root, base, _ = server
    write_corpus(root)
    cfg = _url_config(tmp_path, f"{base}/corpus.txt", "0" * 64)
    with pytest.raises(DataError, match=r"downloaded file has sha256 [0-9a-f]{64}, data.sha256 says 0{64}"):
        prepare_data(cfg, progress=False)
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_url_errors_name_the_problem(tmp_path, server):
    _, base, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        prepare_data(_url_config(tmp_path, f"{base}/missing.txt"), progress=False)
    with pytest.raises(DataError, match="cannot download it .*offline, give a local copy with data.path"):
        prepare_data(_url_config(tmp_path, "http://127.0.0.1:9/x.txt"), progress=False)
    with pytest.raises(ConfigError, match="data.url is required"):
        config_from_dict({"data": {"source": "url"}})
    with pytest.raises(ConfigError, match="data.sha256: expected 64 lowercase hex digits"):
        config_from_dict({"data": {"source": "url", "url": "https://x/y.txt", "sha256": "abc"}})
    with pytest.raises(ConfigError, match="not an http, https or file URL"):
        config_from_dict({"data": {"source": "url", "url": "ftp://x/y.txt"}})
    with pytest.raises(ConfigError, match="data.name: removed; a hub dataset is named by data.path"):
        config_from_dict({"data": {"name": "wikitext"}})
