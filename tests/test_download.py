"""Getting a BEIR dataset without a local copy, with no network: BEIR's archive from a local HTTP server
the test starts, the Hugging Face mirrors from a Hugging Face cache laid out as huggingface_hub keeps it
(read by huggingface_hub itself, offline), and the error when neither source works."""

import functools
import gzip
import hashlib
import http.server
import json
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from benchmarks.pipeline import download
from benchmarks.pipeline.data import DataError, find_dataset, load_dataset
from conftest import shared_dataset

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over a folder: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def no_local_copy(monkeypatch, tmp_path):
    """Only tmp_path/data is searched (the shared folder would otherwise be found first)."""
    monkeypatch.delenv("BEIR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{{name}}.zip"  # nothing listens there: connection refused


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, in place of the user's."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cached_repo(cache, repo: str) -> "Path":
    """The snapshot folder of dataset repo `repo` in a huggingface_hub cache (refs/main -> snapshots/<commit>)."""
    storage = cache / f"datasets--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def card(configs: dict[str, int]) -> str:
    info = "".join(f"- config_name: {c}\n  splits:\n  - name: {c}\n    num_examples: {n}\n" for c, n in configs.items())
    return f"---\ndataset_info:\n{info}---\n# BEIR\n"


def mirror_nfcorpus(cache, layout: str, declared: dict[str, int] | None = None):
    """BeIR/nfcorpus and BeIR/nfcorpus-qrels in the cache, made from the real files: the parquet layout the
    mirror has now, or the jsonl.gz files it had before. The qrels keep BEIR's CRLF line ends."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = shared_dataset("nfcorpus")
    docs = cached_repo(cache, "BeIR/nfcorpus")
    counts = {}
    for config in ("corpus", "queries"):
        rows = [json.loads(line) for line in (source / f"{config}.jsonl").read_text(encoding="utf-8").splitlines()]
        counts[config] = len(rows)
        if layout == "parquet":
            (docs / config).mkdir()
            pq.write_table(pa.Table.from_pylist(rows), docs / config / f"{config}-00000-of-00001.parquet")
        else:
            with gzip.open(docs / f"{config}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    (docs / "README.md").write_text(card(declared or counts))
    qrels = cached_repo(cache, "BeIR/nfcorpus-qrels")
    for split in ("train", "dev", "test"):
        shutil.copyfile(source / "qrels" / f"{split}.tsv", qrels / f"{split}.tsv")
    return source


@pytest.mark.parametrize("layout", ["parquet", "jsonl.gz"])
def test_hf_mirror_when_beir_server_is_down(tmp_path, monkeypatch, hub_cache, layout):
    source = mirror_nfcorpus(hub_cache, layout)
    assert b"\r\n" in (source / "qrels" / "test.tsv").read_bytes()[:200]  # the CRLF case is really exercised
    monkeypatch.setattr(download, "BEIR_URL", closed_port_url())
    no_local_copy(monkeypatch, tmp_path)
    path = find_dataset("nfcorpus", data_dir=tmp_path / "data")
    assert path == tmp_path / "data" / "nfcorpus"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["nfcorpus"]  # no temporary folder left behind
    for split in ("test", "dev", "train"):
        got, want = load_dataset(str(path), split), load_dataset(str(source), split)
        assert got.corpus == want.corpus and got.queries == want.queries and got.qrels == want.qrels
    assert len(got.corpus) == 3633


def test_hf_mirror_counts_are_checked_against_its_card(tmp_path, monkeypatch, hub_cache):
    mirror_nfcorpus(hub_cache, "parquet", declared={"corpus": 3634, "queries": 3237})
    monkeypatch.setattr(download, "BEIR_URL", closed_port_url())
    no_local_copy(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=r"BeIR/nfcorpus gave 3633 corpus rows; its dataset card declares 3634"):
        find_dataset("nfcorpus", data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing half-written, not even the folder


def test_beir_archive_from_a_local_server(tmp_path, monkeypatch, http_dir, hub_cache):
    served, base = http_dir
    source = shared_dataset("nfcorpus")
    archive = served / "nfcorpus.zip"
    with zipfile.ZipFile(archive, "w") as z:  # BEIR's layout: everything under nfcorpus/
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            z.write(source / name, f"nfcorpus/{name}")
    monkeypatch.setattr(download, "BEIR_URL", base + "/{name}.zip")
    monkeypatch.setitem(download.BEIR_MD5, "nfcorpus", hashlib.md5(archive.read_bytes()).hexdigest())
    no_local_copy(monkeypatch, tmp_path)
    path = find_dataset("nfcorpus", data_dir=tmp_path / "data")
    ds = load_dataset(str(path))
    assert (len(ds.corpus), len(ds.queries), sum(map(len, ds.qrels.values()))) == (3633, 323, 12334)


def test_wrong_md5_falls_through_to_the_mirror(tmp_path, monkeypatch, http_dir, hub_cache):
    served, base = http_dir
    (served / "nfcorpus.zip").write_bytes(b"not the archive")
    monkeypatch.setattr(download, "BEIR_URL", base + "/{name}.zip")
    no_local_copy(monkeypatch, tmp_path)
    with pytest.raises(DataError) as e:  # the mirror is not in the cache either
        find_dataset("nfcorpus", data_dir=tmp_path / "data")
    assert "has md5" in str(e.value) and "mirrors BeIR/nfcorpus and BeIR/nfcorpus-qrels failed" in str(e.value)


def test_no_network_names_every_place_tried_and_how_to_provide_it(tmp_path, monkeypatch, hub_cache):
    url = closed_port_url()
    monkeypatch.setattr(download, "BEIR_URL", url)
    monkeypatch.setenv("BEIR_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        find_dataset("scifact", data_dir=tmp_path / "cli")
    msg = str(e.value)
    assert "\n" not in msg
    for place in ("cli/scifact", "env/scifact", "data/scifact", url.format(name="scifact"),
                  "mirrors BeIR/scifact and BeIR/scifact-qrels failed", "hf download BeIR/scifact --repo-type dataset", "by hand"):
        assert place in msg, place
    assert not (tmp_path / "cli").exists()  # nothing created
