"""bertforge: pretrain, fine-tune, compress and serve BERT-family encoders.

The public names are imported lazily, so ``import bertforge`` stays cheap and the CLI starts fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "bertforge.config",
    "PRESETS": "bertforge.config",
    "Encoder": "bertforge.modeling",
    "EncoderOutput": "bertforge.modeling",
    "PretrainingModel": "bertforge.heads",
    "AutoConfig": "bertforge.auto",
    "AutoModel": "bertforge.auto",
    "AutoModelForMaskedLM": "bertforge.auto",
    "AutoModelForPreTraining": "bertforge.auto",
    "AutoTokenizer": "bertforge.data.tokenizers",
    "BertforgeError": "bertforge.errors",
    "pipeline": "bertforge.inference.pipelines",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bertforge' has no attribute {name!r}")
