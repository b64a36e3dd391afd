"""The `minift` command: each subcommand runs, bad options exit non-zero with a message."""

import io

import numpy as np
import pytest

from minift import cli


def test_demo_trains_and_lowers_the_loss():
    out = io.StringIO()
    first = cli.demo(steps=1, seed=0, out=out)
    last = cli.demo(steps=30, seed=0, out=out)
    assert np.isfinite(last) and last < first
    assert "A sample after training" in out.getvalue()


def test_demo_rejects_non_positive_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--steps", "0"])
    assert exit_info.value.code != 0
    assert "--steps: expected a positive integer, got 0" in capsys.readouterr().err


def test_unknown_subcommand_exits_non_zero():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nope"])
    assert exit_info.value.code != 0
