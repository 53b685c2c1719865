"""Hugging Face-style entry points over local checkpoint directories.

    config = bertforge.AutoConfig.from_pretrained("path/to/dir")           # ModelConfig
    encoder = bertforge.AutoModel.from_pretrained("path/to/dir")           # Encoder
    mlm = bertforge.AutoModelForMaskedLM.from_pretrained("path/to/dir")    # PretrainingModel, heads ("mlm",)
    pre = bertforge.AutoModelForPreTraining.from_pretrained("path/to/dir") # the checkpoint's pretraining heads
    encoder.save_pretrained("out/")                                        # transformers loads "out/"

A directory is transformers' layout (bert, roberta, albert, electra, distilbert, roformer, and NEZHA as
transformers 4.40.2 or the original release wrote it) or one bertforge wrote. There is no hub: a name such
as "bert-base-uncased" is an error that asks for a local directory. The work is in convert/checkpoint.py.
"""

from __future__ import annotations

import os

from .config import ModelConfig
from .convert.checkpoint import load_pretrained, read_config
from .heads import PretrainingModel
from .modeling import Encoder

PathLike = str | os.PathLike


class AutoConfig:
    @staticmethod
    def from_pretrained(directory: PathLike) -> ModelConfig:
        """The ModelConfig that config.json describes (before looking at which parts the weights hold)."""
        return read_config(directory).config


class AutoModel:
    @staticmethod
    def from_pretrained(directory: PathLike) -> Encoder:
        """The bare encoder; pretraining heads in the checkpoint are skipped, a missing pooler is noted."""
        return load_pretrained(directory, "model")


class AutoModelForMaskedLM:
    @staticmethod
    def from_pretrained(directory: PathLike, heads: tuple[str, ...] | None = None) -> PretrainingModel:
        """Encoder + MLM head (an ELECTRA checkpoint's generator head). Without one in the checkpoint the
        model loads without it, with a note; ``heads=("mlm",)`` initialises a fresh one instead."""
        return load_pretrained(directory, "mlm", heads)


class AutoModelForPreTraining:
    @staticmethod
    def from_pretrained(directory: PathLike, heads: tuple[str, ...] | None = None) -> PretrainingModel:
        """Encoder + every pretraining head the checkpoint holds (BERT/NEZHA: MLM + NSP, ALBERT: MLM + SOP,
        ELECTRA discriminator: RTD); an expected head that is absent is noted. An explicit ``heads``
        tuple builds exactly those heads, initialising the ones the checkpoint lacks."""
        return load_pretrained(directory, "pretraining", heads)
