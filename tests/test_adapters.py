import pytest
import torch

from bertforge.adapters import AdapterBank, AdapterSet, install, load_adapter, remove, save_adapter, train_only_adapters
from bertforge.config import PRESETS
from bertforge.errors import BertforgeError
from bertforge.modeling import Encoder
from bertforge.tasks import TaskConfig, build_task_model

CFG = PRESETS["test-tiny"].replace(hidden_size=64, intermediate_size=256, hidden_dropout=0.0, attention_dropout=0.0)


def _batch(labels):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (8, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(labels)}


def _train(model, batch, steps=40):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = None
    for _ in range(steps):
        loss = model(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return first, loss.item()


def test_adapter_training_leaves_the_base_bit_identical_and_trains_a_few_percent():
    torch.manual_seed(0)
    encoder = Encoder(CFG)
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = build_task_model(encoder, TaskConfig("classify", labels=("a", "b")))
    adapters = AdapterSet(encoder, bottleneck=4)
    install(encoder, adapters)
    train_only_adapters(model, encoder)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0.005 < trainable / total < 0.06
    first, last = _train(model, _batch([0, 1] * 4))
    assert last < 0.5 * first
    remove(encoder)
    after = encoder.state_dict()
    assert set(after) == set(base) and all(torch.equal(base[k], after[k]) for k in base)
    assert not torch.equal(adapters.norms["attentions/0/norm/weight"], base["attentions.0.norm.weight"])


def test_new_adapter_is_the_identity():
    torch.manual_seed(0)
    encoder = Encoder(CFG).eval()
    ids = torch.randint(5, 100, (2, 7))
    before = encoder(ids).last_hidden_state
    install(encoder, AdapterSet(encoder, 8))
    assert torch.allclose(encoder(ids).last_hidden_state, before, atol=1e-6)


def test_two_adapters_on_one_base_give_their_own_predictions(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(CFG)
    bank = AdapterBank(encoder)
    batch_a, batch_b = _batch([0, 1] * 4), _batch([1, 0] * 4)  # same texts, opposite labels
    for name, batch in (("a", batch_a), ("b", batch_b)):
        model = build_task_model(encoder, TaskConfig("classify", labels=("x", "y")))
        adapters = AdapterSet(encoder, bottleneck=8)
        bank.add(name, adapters, model)
        bank.activate(name)
        train_only_adapters(model, encoder)
        _train(model, batch)
        save_adapter(tmp_path / f"{name}.safetensors", adapters, head=model.head_modules(), meta={"task": name})
    with torch.no_grad():
        pred_a = bank("a", batch_a)["logits"].argmax(-1)
        pred_b = bank("b", batch_a)["logits"].argmax(-1)
    assert pred_a.tolist() == batch_a["labels"].tolist()
    assert pred_b.tolist() == batch_b["labels"].tolist()
    # Saved on their own, loaded onto a fresh copy of the same base: same predictions.
    bank.activate(None)
    fresh = Encoder(CFG)
    fresh.load_state_dict(encoder.state_dict())
    model = build_task_model(fresh, TaskConfig("classify", labels=("x", "y"))).eval()
    adapters, meta = load_adapter(tmp_path / "b.safetensors", fresh, head=model.head_modules())
    install(fresh, adapters)
    assert meta == {"task": "b"}
    with torch.no_grad():
        assert model(batch_a)["logits"].argmax(-1).tolist() == pred_b.tolist()


def test_adapter_file_for_another_architecture_is_refused(tmp_path):
    encoder = Encoder(CFG)
    save_adapter(tmp_path / "a.safetensors", AdapterSet(encoder, 4))
    other = Encoder(CFG.replace(num_layers=3))
    with pytest.raises(BertforgeError, match="hidden size 64 and 2 attention modules; this encoder has 64 and 3"):
        load_adapter(tmp_path / "a.safetensors", other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(BertforgeError, match="cannot read adapter file"):
        load_adapter(tmp_path / "junk.safetensors", encoder)
    with pytest.raises(BertforgeError, match="no adapter named 'z'"):
        AdapterBank(encoder).activate("z")
