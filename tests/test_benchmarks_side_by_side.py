"""benchmarks.side_by_side runs both ways on a tiny base and writes its table and record."""

import json

import pytest

from benchmarks import side_by_side
from minift import pipeline

TINY = pipeline.BaseSpec(d_model=32, n_layer=1, n_head=2, steps=2)


def test_the_benchmark_times_both_ways_and_writes_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(side_by_side, "load_base", lambda: pipeline.load_base(TINY))
    side_by_side.main(["--runs", "2", "--steps", "2", "--repeats", "2", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "side_by_side.json").read_text())
    assert [len(v) for v in record["seconds"].values()] == [2, 2]
    assert all(s > 0 for v in record["seconds"].values() for s in v)
    table = (tmp_path / "side_by_side.md").read_text()
    assert "Machine: CPU:" in table and "over 2 repeats" in table


@pytest.mark.parametrize("bad", [["--runs", "0"], ["--repeats", "1"], ["--steps", "-1"]])
def test_bad_counts_are_refused_by_name(bad, capsys):
    with pytest.raises(SystemExit):
        side_by_side.main(bad)
    assert bad[0] in capsys.readouterr().err
