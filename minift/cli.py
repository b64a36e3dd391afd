"""The ``minift`` command.

    minift demo        train a small GPT on Python's own documentation for a couple of minutes,
                       with a progress bar, then let it write a few lines

More subcommands (pretrain, finetune, compare, …) arrive with the training pipeline.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from tqdm import tqdm

from minift.functional import cross_entropy
from minift.model import GPT, GPTConfig
from minift.optim import AdamW, LRScheduler, clip_grad_norm, warmup_cosine


def _pydoc_text() -> str:
    """Python's help topics: English text that ships with every Python, no network needed."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def demo(steps: int, seed: int, out=sys.stdout) -> float:
    """Train a character-level GPT on the pydoc topics; return the final training loss."""
    text = _pydoc_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    cfg = GPTConfig(vocab_size=len(chars), block_size=64, n_layer=2, n_head=4, d_model=64)
    model = GPT(cfg, seed=seed, dtype=np.float32)
    opt = AdamW(model.named_parameters(), lr=3e-3, weight_decay=0.01)
    schedule = LRScheduler(
        opt,
        lambda t: warmup_cosine(t, warmup_steps=min(20, steps), total_steps=steps, min_ratio=0.1),
    )
    rng = np.random.default_rng(seed)
    B, T = 16, cfg.block_size
    print(
        f"minift demo: a GPT of {model.num_parameters():,} parameters learns Python's help "
        f"text ({len(text):,} characters, {len(chars)} symbols)",
        file=out,
    )
    bar = tqdm(range(steps), desc="training", file=out, unit="step", mininterval=0.5)
    start = time.perf_counter()
    loss = float("nan")
    for step in bar:
        starts = rng.integers(0, len(data) - T - 1, B)
        idx = np.stack([data[s : s + T] for s in starts])
        targets = np.stack([data[s + 1 : s + T + 1] for s in starts])
        schedule.step()
        loss, dlogits = cross_entropy(model.forward(idx), targets)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; training stopped")
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_norm(opt, 1.0)
        opt.step()
        tokens_per_s = (step + 1) * B * T / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
    prompt = np.array([[stoi[c] for c in "The "]])
    sample = model.generate(prompt, 200, temperature=0.8, top_k=10, seed=seed)
    print("\nA sample after training:\n" + "".join(chars[i] for i in sample[0]), file=out)
    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train a small GPT on Python's help text")
    p_demo.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1:
            parser.error(f"--steps: expected a positive integer, got {args.steps}")
        demo(args.steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
