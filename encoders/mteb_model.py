"""Any registered encoder as an MTEB model: `mteb.evaluate(MTEBModel(encoders.load("bert")), tasks)`.

mteb's encoder protocol: `encode(inputs: DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type)`
returning one row per input, plus `similarity` and a `mteb_model_meta`. mteb is optional
(`pip install -e ".[dev]"` has it); this module imports it only when an `MTEBModel` is built.
"""

from __future__ import annotations

from .base import Encoder


def mteb_model_meta(encoder: Encoder, name: str | None = None):
    """The `ModelMeta` mteb files results under: `encoder-bench/<encoder>-<label>`, revision = the first
    12 hex digits of the encoder's fingerprint (so a pruned or retrained model is a different revision)."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(overwrites=dict(
        name=name or f"encoder-bench/{encoder.name}-{encoder.label}",
        revision=encoder.fingerprint[:12],
        n_parameters=encoder.num_parameters,
        n_embedding_parameters=encoder.num_embedding_parameters,
        embed_dim=encoder.embedding_dim,
        max_tokens=encoder.max_length,
        similarity_fn_name=ScoringFunction.COSINE if encoder.similarity == "cos" else ScoringFunction.DOT_PRODUCT,
        framework=["PyTorch"],
        use_instructions=False,
    ))


class MTEBModel:
    """Wraps an `Encoder` for mteb. Queries get the encoder's query prefix, documents its title + text
    (joined by the encoder's own `title_sep`) and document prefix; inputs of other tasks (no prompt type)
    are encoded as they are. The whole input is gathered first and encoded in one call, so the encoder's
    length-sorted batching applies across mteb's small batches."""

    def __init__(self, encoder: Encoder, name: str | None = None):
        self.encoder = encoder
        self.mteb_model_meta = mteb_model_meta(encoder, name)

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None, **kwargs):
        from mteb.types import PromptType

        texts, docs = [], []
        for batch in inputs:
            texts.extend(batch["text"])
            if "body" in batch:  # a corpus batch: mteb's "text" is title + " " + body; keep the parts
                titles = batch.get("title") or [""] * len(batch["body"])
                docs.extend({"title": t or "", "text": b} for t, b in zip(titles, batch["body"]))
        show = kwargs.get("show_progress_bar", False)
        if prompt_type == PromptType.query:
            return self.encoder.encode_queries(texts, show_progress_bar=show)
        if prompt_type == PromptType.document:  # joined with this encoder's own title_sep
            return self.encoder.encode_corpus(docs if len(docs) == len(texts) else texts, show_progress_bar=show)
        return self.encoder.encode(texts, show_progress=show)

    def similarity(self, a, b):
        from mteb.similarity_functions import cos_sim, dot_score

        return (cos_sim if self.encoder.similarity == "cos" else dot_score)(a, b)

    def similarity_pairwise(self, a, b):
        from mteb.similarity_functions import pairwise_cos_sim, pairwise_dot_score

        return (pairwise_cos_sim if self.encoder.similarity == "cos" else pairwise_dot_score)(a, b)

