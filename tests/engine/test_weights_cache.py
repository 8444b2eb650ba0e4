"""The URL weights cache against a real HTTP server on 127.0.0.1 (a free port, started and stopped
here): keyed by the whole URL, downloads checked against their Content-Length, unreadable cached
files fetched again, `maskrcnn weights --clear`."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from maskrcnn import weights
from maskrcnn.checkpoints import cache_dir, cached_path, load_model, read_checkpoint, resolve_weights
from maskrcnn.cli import main
from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.engine.checkpoint import save_model
from maskrcnn.errors import UserError
from maskrcnn.model import build_model
from tests.helpers import TINY


class Server:
    """Serves `files` ({path: bytes}); a path in `lying` announces its whole Content-Length but
    sends only the first half, then closes the connection. `hits` counts the GETs per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.lying: set[str] = set()
        self.hits: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.hits[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.lying else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cache_files(home) -> list[str]:
    """Every file under the cache, hidden temporary ones included, relative to it."""
    root = home / "checkpoints"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def two_checkpoints(tiny_weights, tmp_path_factory) -> tuple[bytes, bytes]:
    """Two different models' checkpoint bytes: the session's tiny model (seed 0, cat/dog) and
    another (seed 1, fox/owl)."""
    torch.manual_seed(1)
    other = build_model(apply_overrides(get_preset("default"), TINY), class_names=["fox", "owl"])
    path = tmp_path_factory.mktemp("other") / "model.pt"
    save_model(other, path)
    return tiny_weights.read_bytes(), path.read_bytes()


def test_two_urls_with_one_file_name_are_two_models(server, home, two_checkpoints, tmp_path):
    a_bytes, b_bytes = two_checkpoints
    server.files = {"/a/model.pt": a_bytes, "/b/model.pt": b_bytes}
    a_url, b_url = server.url("/a/model.pt"), server.url("/b/model.pt")
    model_a = load_model(a_url)
    model_b = load_model(b_url)
    assert (model_a.class_names, model_b.class_names) == (["cat", "dog"], ["fox", "owl"])
    (tmp_path / "b.pt").write_bytes(b_bytes)
    expected_b = read_checkpoint(tmp_path / "b.pt")["model"]
    state_b = model_b.state_dict()
    assert all(torch.equal(state_b[k], v) for k, v in expected_b.items())
    differs = [
        k for k, v in model_a.state_dict().items() if v.is_floating_point() and not torch.equal(v, state_b[k])
    ]
    assert len(differs) > 10  # the two are really two different models
    assert server.hits == {"/a/model.pt": 1, "/b/model.pt": 1}
    assert cached_path(a_url) != cached_path(b_url) and cached_path(a_url).name == "model.pt"
    # both stay cached: loading them again downloads nothing
    assert load_model(b_url).class_names == ["fox", "owl"] and load_model(a_url).class_names == ["cat", "dog"]
    assert server.hits == {"/a/model.pt": 1, "/b/model.pt": 1}
    assert len(cache_files(home)) == 2
    # `maskrcnn weights --clear URL` removes that URL's download only
    assert main(["weights", "--clear", a_url]) == 0
    assert not cached_path(a_url).exists() and cached_path(b_url).is_file()
    assert main(["weights", "--clear"]) == 0
    assert cache_files(home) == []


def test_a_truncated_download_leaves_nothing_and_the_next_run_downloads_again(server, home, two_checkpoints):
    body = two_checkpoints[0]
    server.files = {"/lied.pt": body}
    server.lying = {"/lied.pt"}
    url = server.url("/lied.pt")
    with pytest.raises(UserError) as info:
        load_model(url)
    assert str(info.value).startswith(
        f"could not download {url}: the server sent {len(body) // 2} of the {len(body)} bytes it announced"
    )
    assert cache_files(home) == []  # no half file, no temporary file
    server.lying = set()  # the server now sends the whole file: the next run downloads it
    assert load_model(url).class_names == ["cat", "dog"]
    assert server.hits["/lied.pt"] == 2
    assert cache_files(home) == [str(cached_path(url).relative_to(cache_dir()))]


def test_an_unreadable_cached_file_is_named_and_fetched_once_more(server, home, two_checkpoints, capsys):
    body = two_checkpoints[0]
    server.files = {"/m/model.pt": body, "/bad/model.pt": b"not a checkpoint at all" * 100}
    url = server.url("/m/model.pt")
    target = cached_path(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * 1000)  # a cached file damaged since it was downloaded
    assert load_model(url).class_names == ["cat", "dog"]
    note = capsys.readouterr().err
    assert f"note: {url}: its cached file {target} cannot be read" in note and "downloading it again" in note
    assert server.hits["/m/model.pt"] == 1 and target.read_bytes() == body
    # a URL that serves a file that is no checkpoint: one error naming the URL and the cache file
    bad = server.url("/bad/model.pt")
    with pytest.raises(
        UserError, match=rf"{bad}: downloaded again, its file {cached_path(bad)} still cannot"
    ):
        load_model(bad)
    assert server.hits["/bad/model.pt"] == 2 and not cached_path(bad).exists()
    # a hash given with the URL is checked on every use: the cached file of another content is not served
    with pytest.raises(UserError, match=rf"checksum mismatch for {url}: expected sha256 {'0' * 64}"):
        resolve_weights(url, sha256="0" * 64, progress=False)
    assert server.hits["/m/model.pt"] == 2 and target.read_bytes() == body  # the old file is kept


def test_clear_by_name_removes_the_download_and_the_conversion(home, capsys):
    entry = weights.get("maskrcnn_resnet50_fpn_coco")
    planted = [weights.download_path(entry), weights.converted_path(entry)]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert weights.cache_state(entry) == "downloaded, converted"
    assert main(["weights", "--clear", "torchvision_v1"]) == 0  # an alias works too
    out = capsys.readouterr().out
    assert out.startswith(f"removed 2 cached files from {cache_dir()}") and all(
        str(p) in out for p in planted
    )
    assert weights.cache_state(entry) == "not cached" and cache_files(home) == []
    with pytest.raises(UserError, match="unknown weights name 'no_such_model'"):
        main(["--debug", "weights", "--clear", "no_such_model"])
