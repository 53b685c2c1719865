"""`bertforge demo` (what `make demo` runs) end to end with a tiny pretraining budget: People's Daily ->
tokenizer -> corpus store -> pretraining -> report + fill-mask."""

import pytest

from bertforge.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--minutes", "0.05", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fill-mask with the new model" in out and "all-MiniLM-L6-v2" in out
    run = tmp_path / "run-roberta-wwm-ext"
    assert (run / "report.md").is_file() and (run / "final" / "config.json").is_file()
    assert (tmp_path / "peoples-daily.store" / "manifest.json").is_file()
    # a second demo reuses the tokenizer and the store
    assert main(["demo", "--minutes", "0.05", "--out", str(tmp_path)]) == 0
    assert "== training a" not in capsys.readouterr().out  # no tokenizer training the second time
