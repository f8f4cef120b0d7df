"""Prune a small byte-level decoder to 50% with Wanda, block by block, and compare perplexity.

Trains a tiny Llama-style decoder on the Python standard library's own sources (nothing is
downloaded), prunes every Linear of its decoder layers with Wanda (|W| * ||X||, per output row),
and prints held-out perplexity before and after, with plain magnitude pruning for comparison.

    python examples/llm_wanda.py --steps 400
"""

from __future__ import annotations

import argparse

import torch

import purecompress as pc
from purecompress import llm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the tiny decoder")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--held-out", type=int, default=40_000, help="held-out bytes for perplexity")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    corpus = llm.stdlib_corpus(1_000_000, args.held_out)
    model = llm.train_decoder(llm.DecoderConfig(dim=64, layers=2, heads=4, hidden=192), corpus.train,
                              steps=args.steps, batch=16, seq_len=64)
    calib = llm.calibration_batches(corpus.train, samples=32, seq_len=64)

    result = llm.wanda(model, calib, sparsity=args.sparsity)  # the model itself is not changed
    params = pc.params_of(model)
    magnitude = pc.apply_masks(params, llm.magnitude_masks(params, llm.linear_weights(model), sparsity=args.sparsity))

    ppl = lambda p=None: llm.perplexity(model, corpus.held_out, params=p, seq_len=64)
    print(f"dense      perplexity {ppl():.3f}")
    print(f"magnitude  perplexity {ppl(magnitude):.3f}")
    print(f"wanda      perplexity {ppl(result.params):.3f}")
    report = pc.sparsity_report(result.params, result.masks)
    print(f"sparsity of the pruned layers: {report.total:.3f}")


if __name__ == "__main__":
    main()
