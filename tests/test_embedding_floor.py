"""benchmarks.embedding_floor: the token-embedding bag, checked by hand and end to end."""

import numpy as np
import pytest
import torch

import encoders
from benchmarks.pipeline.data import load_dataset
from benchmarks.studies.embedding_floor import bag_of_embeddings, embedding_floor, main, token_table
from conftest import write_beir
from numerics import assert_close

DOCS = ["Plants convert sunlight into sugar.", "The mitochondrion produces ATP.", "Shock waves form at Mach one.",
        "Vaccines train the immune system."]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return encoders.load("hyena", preset="tiny", show_progress=False)


def test_bag_is_the_normalised_mean_of_the_token_embeddings(tiny):
    table = token_table(tiny)
    assert table.shape[0] == len(tiny.tokenizer)  # the vocabulary table, not a smaller one
    ids = tiny.tokenize(DOCS[:1])[0]
    expected = table[ids].mean(0)
    # a mean over the tokens, then a norm over 64 dimensions, summed in another order
    assert_close(bag_of_embeddings(tiny, table, DOCS[:1])[0], expected / expected.norm(), terms=len(ids) + 64,
                 chains=2)


def test_a_query_equal_to_its_document_is_found_first(tiny, tmp_path):
    # Identical token bags have cosine 1; distinct bags of random embeddings almost surely less.
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)]
    queries = [{"_id": f"q{i}", "text": t} for i, t in enumerate(DOCS)]
    write_beir(tmp_path / "same", corpus, queries, [(f"q{i}", f"d{i}", 1) for i in range(len(DOCS))])
    metrics = embedding_floor(tiny, load_dataset("same", data_dir=tmp_path, download=False))
    assert metrics["ndcg@10"] == pytest.approx(1.0)


def test_cli_prints_one_line_and_names_bad_input(tiny_dataset, capsys):
    assert main(["--encoder", "hyena", "--preset", "tiny", "--dataset", "tiny", "--data-dir",
                 str(tiny_dataset.parent)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "token-embedding bag NDCG@10" in out[0]
    assert main(["--encoder", "nope", "--dataset", "tiny", "--data-dir", str(tiny_dataset.parent)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--encoder", "hyena", "--preset", "tiny", "--dataset", "absent", "--data-dir",
                 str(tiny_dataset.parent)]) == 2
    assert "absent" in capsys.readouterr().err
