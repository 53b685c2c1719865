"""NEZHA checkpoints as Huawei released them, read through the transformers NEZHA layout in hf.py.

NEZHA (Wei et al., 2019) shipped as a BERT-style PyTorch checkpoint: ``bert_config.json`` without a
``model_type`` but with ``max_relative_position`` (and ``use_relative_position: true``), and
``pytorch_model.bin`` with ``bert.*`` tensor names and no absolute position table, because positions enter
attention as fixed sinusoids of the clipped relative distance (positions.nezha_relative_positions).
transformers 4.40.2's ``NezhaModel`` is the same network under ``nezha.*`` names with ``model_type:
"nezha"``. hf.LAYOUTS["nezha"] reads both prefixes; this module turns the original config into the
transformers one. Saving always writes the transformers 4.40.2 layout, which both can load.
"""

from __future__ import annotations

from typing import Any

from ..errors import BertforgeError

# The original release names its config bert_config.json; transformers writes config.json.
CONFIG_NAMES = ("config.json", "bert_config.json")


def is_original_config(data: dict[str, Any]) -> bool:
    """A config without model_type that speaks of relative positions is an original NEZHA config."""
    return "model_type" not in data and ("max_relative_position" in data or "use_relative_position" in data)


def config_from_original(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Original NEZHA config -> the transformers NezhaConfig dict that hf.config_from_hf reads."""
    if data.get("use_relative_position", True) is not True:
        raise BertforgeError(
            f"{source}: use_relative_position={data['use_relative_position']!r}: without relative positions "
            'this is a plain BERT checkpoint; set "model_type": "bert"'
        )
    converted = {k: v for k, v in data.items() if k != "use_relative_position"}
    converted["model_type"] = "nezha"
    return converted
