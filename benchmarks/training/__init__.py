"""Retrieval training (see `python -m benchmarks.train --help`): config, data, losses, loop, checkpoints."""

from .checkpoints import META_FILE, STATE_FILE, read_meta, write_checkpoint
from .config import TrainConfig, TrainError, check_config, load_plan
from .data import TrainData, load_train_data, make_batch, mine_hard_negatives, sample, teacher_embeddings
from .loop import lr_factor, make_optimizer, run_plan, train, train_step
from .losses import losses

__all__ = ["META_FILE", "STATE_FILE", "TrainConfig", "TrainData", "TrainError", "check_config", "load_plan",
           "load_train_data", "losses", "lr_factor", "make_batch", "make_optimizer", "mine_hard_negatives",
           "read_meta", "run_plan", "sample", "teacher_embeddings", "train", "train_step", "write_checkpoint"]
