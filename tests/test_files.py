"""bertforge.files: the one way bertforge writes a file (temporary name, then rename)."""

import json
import os
import stat

import numpy as np
import pytest

from bertforge import files
from bertforge.config import ModelConfig
from bertforge.modeling import Encoder


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_json_text_and_bytes(tmp_path):
    files.write_json(tmp_path / "a.json", {"标签": [1, 2]})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "标签": [\n    1,\n    2\n  ]\n}\n'
    files.write_json(tmp_path / "b.json", {"x": "é"}, ensure_ascii=True, indent=None)
    assert (tmp_path / "b.json").read_text() == '{"x": "\\u00e9"}\n'
    files.write_text(tmp_path / "c.txt", "三国\n")
    assert (tmp_path / "c.txt").read_bytes() == "三国\n".encode()
    assert files.write_bytes(tmp_path / "d.bin", b"\x00\x01") == tmp_path / "d.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.txt", "d.bin"]  # no leftovers


def test_an_error_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise KeyboardInterrupt  # Ctrl-C in the middle of a save
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with pytest.raises(TypeError):
        files.write_json(tmp_path / "x.json", {"not serializable": object()})
    assert not (tmp_path / "x.json").exists() and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_temporary_name_is_hidden_and_keeps_the_suffix(tmp_path):
    with files.atomic_path(tmp_path / "table.npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.") and tmp.suffix == ".npz"
        np.savez(tmp, a=np.arange(3))  # np.savez appends .npz to a name without it
    assert np.load(tmp_path / "table.npz")["a"].tolist() == [0, 1, 2]


def test_saved_files_get_the_umask_permissions_not_0600(tmp_path, umask_022):
    """mkstemp creates 0600 files: a model saved that way cannot be read by another account (a server)."""
    files.write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644
    config = ModelConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    Encoder(config).save_pretrained(tmp_path / "model")
    for name in ("config.json", "model.safetensors"):
        assert mode(tmp_path / "model" / name) == 0o644, name
    assert json.loads((tmp_path / "model" / "config.json").read_text())["bertforge"]["config"]["hidden_size"] == 32
    os.umask(0o077)  # a stricter umask is kept too
    files.write_text(tmp_path / "private.txt", "x")
    assert mode(tmp_path / "private.txt") == 0o600
