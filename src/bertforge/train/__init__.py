"""The training engine: one loop for every objective, LAMB and AdamW, atomic checkpoints, exact resume, DDP.

    from bertforge.train import Trainer, TrainConfig
    result = Trainer(objective, train_stream, eval_stream_factory, TrainConfig(max_steps=1000), "runs/x").train()
"""

from .checkpoint import CheckpointWarning, seed_everything
from .config import TrainConfig
from .loop import Trainer, TrainResult
from .optim import Lamb, build_optimizer, lr_multiplier
from .report import write_report

__all__ = ["CheckpointWarning", "Lamb", "TrainConfig", "TrainResult", "Trainer", "build_optimizer",
           "lr_multiplier", "seed_everything", "write_report"]
