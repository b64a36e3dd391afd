"""Data parallelism on one machine: each thread runs a slice of the batch on its own replica.

The training loop's default wherever two cores are ours (``default_threads``); ``threads=1``
(``--threads 1``) gives the plain loop, the clear reference it is tested equal to. By hand:

    dp = DataParallel(model, n_threads=2)
    opt.zero_grad()
    loss = dp.forward_backward(idx, targets)   # fills model's Param.grad, as forward + backward
    opt.step(dp.run_tasks)                     # the parameter updates shared out too

Why it pays on a small CPU model: a [B·T, C] activation is too small for a multi-threaded BLAS
to keep two cores busy, and NumPy's elementwise ops (LayerNorm, GELU, softmax) use one core
whatever BLAS does. Two Python threads each running half the batch, with BLAS set to ONE thread
per caller, keep both cores busy for the whole step: NumPy releases the GIL inside its loops and
BLAS calls, so the threads overlap wherever the arrays are large enough.

How. Thread i runs forward, loss and backward of batch rows ``shard_i`` on replica i, a copy of
the module tree that

- shares every parameter VALUE with the model (the same ndarray objects: an optimizer step on
  the model is seen by every replica, nothing to synchronise), and
- has its own Param objects, so its own ``grad`` (two threads never add into one array), and its
  own caches (each module remembers ITS shard's forward).

Replica 0 is the model itself. The mean loss over the batch is

    L = (1/N) Σ_kept ℓ_t = Σ_i (N_i/N) · L_i,    N_i = kept targets of shard i,  N = Σ_i N_i

so shard i's dlogits (the gradient of its own mean L_i) is scaled by N_i/N before its backward,
and the model's gradient is the sum of the replicas' gradients. That is the single-thread
gradient up to the order of summation (and the rounding of N_i/N): ``tests/test_parallel.py``
checks it to 1e-12 relative in float64 and to float32 rounding in float32.

Dropout: each replica draws from its own generator (spawned from the model's), so with dropout
the masks differ from a single-thread run; the expectation is the same.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from threadpoolctl import ThreadpoolController

from minift.errors import check_int
from minift.functional import cross_entropy
from minift.machine import usable_cores
from minift.nn import Module
from minift.param import Param

__all__ = ["DataParallel", "default_threads", "one_blas_thread_in_children", "replicate"]


def default_threads() -> int:
    """The training threads when none are asked for: 2 where this process may use two cores or
    more, else 1 (the plain loop).

    Two and not every core: two is what ``benchmarks/train_step.py`` measured on the machines
    minift is built on (a batch of 16 cut into more shares gives each thread less than a BLAS
    call's worth of work, and more cores were never measured).
    """
    return 2 if usable_cores() >= 2 else 1


_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def one_blas_thread_in_children():
    """Inside: a child process started now loads numpy with one BLAS thread (the variables that
    OpenBLAS, OpenMP and MKL read as they load); after: this process's environment as it was.

    For processes that run side by side on the cores (compare's workers, finetune_many): a BLAS
    call with threads of its own would fight the other processes for the same cores.
    """
    saved = {k: os.environ.get(k) for k in _BLAS_THREAD_VARS}
    os.environ.update(dict.fromkeys(_BLAS_THREAD_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replicate(model: Module) -> Module:
    """A copy of the module tree with new Params that SHARE the model's value arrays.

    Every other ndarray (masks, buffers, cached activations) is shared too, not copied; random
    generators are replaced by generators spawned from them.
    """
    memo: dict[int, object] = {}
    for _, module in model.named_modules():
        for value in vars(module).values():
            if isinstance(value, Param):
                if id(value) not in memo:
                    memo[id(value)] = Param(value.value, value.trainable)
                    memo[id(value.value)] = value.value
            elif isinstance(value, np.ndarray):
                memo[id(value)] = value
            elif isinstance(value, np.random.Generator) and id(value) not in memo:
                memo[id(value)] = value.spawn(1)[0]
    replica = copy.deepcopy(model, memo)
    for _, module in replica.named_modules():  # no stale activations of the model's last pass
        if "_cache" in vars(module):
            module._cache = None
    return replica


class DataParallel:
    """Run forward + loss + backward of a batch as ``n_threads`` shards in parallel threads.

    ``model.forward(idx)`` must return logits whose first axis is the batch, and
    ``model.backward(dlogits)`` must accumulate into ``Param.grad``: GPT and
    GPTForSequenceClassification do, PEFT-wrapped or not.
    """

    def __init__(self, model: Module, n_threads: int = 2):
        self.model = model
        self.n_threads = check_int("n_threads", n_threads)
        self._blas = ThreadpoolController()
        self._pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="minift-dp")
        self._build()

    def _build(self):
        self._names = list(self.model.named_parameters())
        self.replicas = [self.model] + [replicate(self.model) for _ in range(self.n_threads - 1)]

    def _sync(self) -> dict[str, Param]:
        """Point every replica at the model's current arrays and flags (cheap: references)."""
        params = self.model.named_parameters()
        if list(params) != self._names:  # the tree changed (a PEFT wrap, a merge): rebuild
            self._build()
            return params
        for replica in self.replicas[1:]:
            for name, rp in replica.named_parameters().items():
                p = params[name]
                rp.value, rp.trainable, rp.grad = p.value, p.trainable, None
        return params

    def one_blas_thread(self):
        """A context in which BLAS runs one thread per caller (as inside ``forward_backward``)."""
        return self._blas.limit(limits=1, user_api="blas")

    def close(self) -> None:
        self._pool.shutdown()

    def forward_backward(self, idx, targets, ignore_index: int = -100, grad_scale=1.0) -> float:
        """Mean cross-entropy of the whole batch; ADDS its gradient into the model's Param.grad.

        ``grad_scale`` multiplies the gradient that is added (1/grad_accum when accumulating
        micro-batches), never the loss returned.

        idx int [B, ...] and targets int [B, ...] as ``model.forward`` and ``cross_entropy``
        take them. Returns the loss (a float), the same as the single-thread
        ``cross_entropy(model.forward(idx), targets)``.
        """
        idx, targets = np.asarray(idx), np.asarray(targets)
        if idx.shape[0] != targets.shape[0]:
            raise ValueError(
                f"targets: expected the batch size of idx ({idx.shape[0]}), got {targets.shape[0]}"
            )
        rows = [r for r in np.array_split(np.arange(idx.shape[0]), self.n_threads) if len(r)]
        shards = [(idx[r[0] : r[-1] + 1], targets[r[0] : r[-1] + 1]) for r in rows]
        return self.forward_backward_groups(shards, ignore_index, grad_scale)

    def forward_backward_groups(self, groups, ignore_index: int = -100, grad_scale=1.0) -> float:
        """``forward_backward`` of a batch given as groups [(idx, targets), …], each padded to
        its own length (``example_sampler(groups=k)``): the groups are shared out between the
        threads, each about the same number of tokens (largest first, each to the least loaded
        thread), and each group's loss and gradient weighted by its share of the targets."""
        params = self._sync()
        groups = [(np.asarray(i), np.asarray(t)) for i, t in groups]
        kept = [int((t != ignore_index).sum()) for _, t in groups]
        n_kept = sum(kept)
        if n_kept == 0:
            raise ValueError(f"targets: every target equals ignore_index={ignore_index}; no loss")
        shares: list[list[int]] = [[] for _ in range(self.n_threads)]
        loads = [0] * self.n_threads
        for g in sorted(range(len(groups)), key=lambda g: -groups[g][0].size):
            i = loads.index(min(loads))
            shares[i].append(g)
            loads[i] += groups[g][0].size

        def run(i):  # forward, loss and backward of thread i's groups, on replica i
            replica, loss = self.replicas[i], 0.0
            for g in shares[i]:
                if kept[g] == 0:  # nothing of this group enters the loss
                    continue
                group_idx, group_targets = groups[g]
                group_loss, dlogits = cross_entropy(
                    replica.forward(group_idx), group_targets, ignore_index
                )
                dlogits *= kept[g] / n_kept * grad_scale  # dL/dlogits of the batch mean
                replica.backward(dlogits)
                loss += group_loss * kept[g] / n_kept
            return loss

        with self.one_blas_thread():
            futures = [self._pool.submit(run, i) for i in range(1, self.n_threads)]
            try:
                losses = [run(0)]
            finally:  # never leave a thread running past this call, even on an error
                wait(futures)
            losses += [f.result() for f in futures]

        # the model's grad += each replica's, the parameters shared out between the threads
        replica_params = [r.named_parameters() for r in self.replicas[1:]]

        def add_replica_grads(name):
            for rps in replica_params:
                rp = rps[name]
                if rp.grad is not None:
                    params[name].accumulate_grad(rp.grad)
                    rp.grad = None

        self.run_tasks(
            [(p.size, functools.partial(add_replica_grads, name)) for name, p in params.items()]
        )
        return float(sum(losses))

    def run_tasks(self, tasks) -> None:
        """Run (size, zero-argument function) tasks on the threads, each thread a share of about
        equal total size (largest first, each to the least loaded thread).

        For work whose tasks touch disjoint arrays, such as ``optimizer.step(dp.run_tasks)``:
        every parameter's update reads and writes its own arrays only.
        """
        shares = [[] for _ in range(self.n_threads)]
        loads = [0] * self.n_threads
        for size, task in sorted(tasks, key=lambda t: -t[0]):
            i = loads.index(min(loads))
            shares[i].append(task)
            loads[i] += size

        def run_share(share):
            for task in share:
                task()

        futures = [self._pool.submit(run_share, share) for share in shares[1:]]
        try:
            run_share(shares[0])
        finally:
            wait(futures)
        for f in futures:
            f.result()  # raises a thread's exception here


class ThreadScratch:
    """Reusable work arrays, so that an update allocates nothing: ``like(x)`` is a view shaped
    like ``x`` into one flat buffer per dtype AND per thread, because the updates of
    ``DataParallel.run_tasks`` run in several threads at once and must not share one.

    Not optimizer state: never saved, and ``Optimizer.state_bytes`` does not count it.
    """

    def __init__(self):
        self._buffers: dict[tuple, np.ndarray] = {}  # (dtype, thread) -> flat array

    def like(self, array: np.ndarray) -> np.ndarray:
        key = (array.dtype, threading.get_ident())
        flat = self._buffers.get(key)
        if flat is None or flat.size < array.size:
            flat = self._buffers[key] = np.empty(array.size, dtype=array.dtype)
        return flat[: array.size].reshape(array.shape)
