"""The training objective: cosine + in-batch KL distillation and InfoNCE, weighted."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import TrainData


def losses(cfg: TrainConfig, student, data: TrainData, ids: list[list[int]], batch, tq, td) -> dict:
    q, d, target = batch
    nq = len(q)
    parts = []
    for rows in ([ids[i] for i in q], [ids[len(data.queries) + i] for i in d]):  # queries, then documents:
        input_ids, mask = student.pad(rows)  # padded separately (a query is ~10x shorter)
        parts.append(student.embed_batch(input_ids.to(student.device), mask.to(student.device)))
    emb = torch.cat(parts)  # normalised
    out = {}
    if tq is not None:
        teacher = torch.from_numpy(np.concatenate([tq[q], td[d]])).to(emb.device)
        if cfg.cos_weight:
            out["cos"] = (1 - (emb * teacher).sum(-1)).mean()
        if cfg.kl_weight:
            # Each text's similarity distribution over the other texts of the batch.
            diag = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
            s = F.log_softmax((emb @ emb.t() / cfg.temperature).masked_fill(diag, -1e9), -1)
            t = F.log_softmax((teacher @ teacher.t() / cfg.temperature).masked_fill(diag, -1e9), -1)
            out["kl"] = F.kl_div(s, t, log_target=True, reduction="batchmean")
    if cfg.contrastive_weight:
        logits = emb[:nq] @ emb[nq:].t() / cfg.temperature
        # Another document judged relevant to the query is no negative.
        other = torch.tensor([[int(doc) in data.relevant[qi] for doc in d] for qi in q], device=emb.device)
        other[torch.arange(nq), torch.from_numpy(target)] = False
        out["contrastive"] = F.cross_entropy(logits.masked_fill(other, -1e9), torch.from_numpy(target).to(emb.device))
    weights = dict(cos=cfg.cos_weight, kl=cfg.kl_weight, contrastive=cfg.contrastive_weight)
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out
