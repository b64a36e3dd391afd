"""benchmarks.article_claims: the grid it runs, and the tables it writes from the records."""

import pytest

from benchmarks import article_claims as ac
from minift.stats import mean_ci


def test_every_part_runs_each_setting_once_per_seed():
    seeds = [0, 1, 2]
    jobs = [j for p in ac.PARTS for j in ac.jobs_for(p, seeds, 200)]
    assert len({ac.key(j) for j in jobs}) == len(jobs)
    sizes = ac.jobs_for("data-size", seeds, 200)
    assert len(sizes) == len(ac.DATA_SIZE_METHODS) * len(ac.N_TRAIN) * len(seeds)
    assert {j[4] for j in sizes} == set(ac.N_TRAIN)
    variants = {j[3] for j in ac.jobs_for("lora-mlp", seeds, 200)}
    assert variants == {"attention", "attention+mlp"}


def test_a_run_in_the_file_is_known_by_its_key_whatever_its_n_train_was_called():
    (job,) = [j for j in ac.jobs_for("sharing", [0, 1, 2], 200) if j[2] == "full" and j[5] == 1]
    record = {"part": "sharing", "task": job[1], "method": "full", "variant": "",
              "n_train": ac._train_size(job[1]), "seed": 1, "steps": 200}  # fmt: skip
    assert ac.key(job) == ac.key(record)


def test_the_table_holds_each_settings_mean_and_interval_over_its_seeds():
    accuracies = [0.5, 0.7, 0.65]
    records = [{"part": "adalora", "task": "stdlib-modules", "method": "adalora", "variant": "",
                "n_train": 720, "seed": s, "steps": 200, "trainable": 25392, "accuracy": a,
                "kept_ranks": {"h.0.c_attn": 12 - s, "h.1.c_attn": 4 + s}}
               for s, a in enumerate(accuracies)]  # fmt: skip
    text = ac.markdown(records, ["python -m benchmarks.article_claims"], "a machine", 200)
    assert f"| adalora | — | 720 | 3 | 25,392 | {mean_ci(accuracies).format()} |" in text
    assert "| h.0.c_attn | 12 | 11 | 10 |" in text and "| h.1.c_attn | 4 | 5 | 6 |" in text
    assert "## data-size" not in text  # a part with no runs has no table
    assert "## adalora" not in ac.markdown(records, [], "a machine", 300)  # other steps: apart


def test_fewer_than_three_seeds_are_refused():
    with pytest.raises(SystemExit):
        ac.main(["--seeds", "0", "1"])
