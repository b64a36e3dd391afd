"""minift.optim_state: a saved optimizer state that was hand-edited or damaged is refused whole,
with the field it got wrong, and the optimizer keeps what it had. tests/test_optim.py holds
the round trip and the misfits of params, shapes, dtypes and non-finite values; here, the
misfits of the meta (groups, hyper-parameters, step counts) and of the tensors' names."""

import copy
import re

import numpy as np
import pytest

from minift.optim import SGD, AdamW
from minift.param import Param


def _params():
    rng = np.random.default_rng(3)
    return {
        "w": Param(rng.standard_normal((3, 2)).astype(np.float32)),
        "b": Param(rng.standard_normal(2).astype(np.float32)),
    }


def _saved(optimizer_type=AdamW, **hyper):
    """A state after two steps: every param has its moments and a step count of 2."""
    params = _params()
    opt = optimizer_type(params, lr=0.01, **hyper)
    rng = np.random.default_rng(4)
    for _ in range(2):
        for p in params.values():
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    return opt.state_dict()


def _edited(meta, edit):
    meta = copy.deepcopy(meta)
    edit(meta)
    return meta


META_EDITS = [
    ("two groups where one was saved", lambda m: m["groups"].append(dict(m["groups"][0])),
     "param groups: expected 1 saved groups, got 2"),
    ("groups not a list", lambda m: m.update(groups={"lr": 0.01}),
     "param groups: expected 1 saved groups, got {'lr': 0.01}"),
    ("a hyper-parameter deleted", lambda m: m["groups"][0].pop("betas"),
     "param group 0: hyper-parameter 'betas' missing"),
    ("a step count for a param this optimizer lacks", lambda m: m["step_counts"].update(v=2),
     "step_counts: unknown param 'v'"),
    ("a step count of 0", lambda m: m["step_counts"].update(w=0),
     "step_counts['w']: expected an integer >= 1, got 0"),
    ("a step count written as text", lambda m: m["step_counts"].update(w="2"),
     "step_counts['w']: expected an integer >= 1, got '2'"),
    ("a step count of true", lambda m: m["step_counts"].update(w=True),
     "step_counts['w']: expected an integer >= 1, got True"),
    ("a param's step count deleted", lambda m: m["step_counts"].pop("b"),
     "state tensor 'exp_avg/b': param 'b' has no step count in meta"),
]  # fmt: skip


@pytest.mark.parametrize("what, edit, message", META_EDITS, ids=[e[0] for e in META_EDITS])
def test_an_edited_meta_is_refused_naming_the_field_and_nothing_is_loaded(what, edit, message):
    tensors, meta = _saved()
    opt = AdamW(_params(), lr=0.5)
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.load_state_dict(tensors, _edited(meta, edit))
    assert opt.state == {} and opt.step_counts == {} and opt.param_groups[0]["lr"] == 0.5
    opt.load_state_dict(tensors, meta)  # the unedited state loads
    assert opt.step_counts == {"w": 2, "b": 2} and opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg.w", "moment/w", "/w"])
def test_a_tensor_name_that_is_not_state_slash_param_is_refused(key):
    tensors, meta = _saved()
    opt = AdamW(_params(), lr=0.01)
    with pytest.raises(ValueError, match=re.escape(f"state tensor {key!r}: expected '<state>/")):
        opt.load_state_dict({**tensors, key: tensors["exp_avg/w"]}, meta)
    assert opt.state == {}


def test_a_state_saved_without_momentum_does_not_load_into_sgd_with_momentum():
    """SGD keeps a momentum buffer only when its momentum is > 0: the saved hyper-parameters
    decide which tensors must be there, so a state without buffers cannot become one with."""
    tensors, meta = _saved(SGD)
    assert tensors == {} and meta["groups"][0]["momentum"] == 0
    with_momentum = _edited(meta, lambda m: m["groups"][0].update(momentum=0.9))
    opt = SGD(_params(), lr=0.01, momentum=0.9)
    with pytest.raises(ValueError, match=r"state tensor 'momentum_buffer/[wb]' missing"):
        opt.load_state_dict(tensors, with_momentum)
    opt.load_state_dict(tensors, meta)  # as saved: plain SGD, nothing to restore
    assert opt.param_groups[0]["momentum"] == 0 and opt.step_counts == {"w": 2, "b": 2}
