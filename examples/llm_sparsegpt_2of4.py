"""Prune a small byte-level decoder to 2:4 sparsity with SparseGPT (weights updated from the Hessian).

Every 4 consecutive input weights of each Linear keep 2, the pattern sparse tensor cores run; on
a CUDA machine the masked weights are also turned into ``torch.sparse`` semi-structured tensors
and checked against the masked dense model.

    python examples/llm_sparsegpt_2of4.py --steps 400
"""

from __future__ import annotations

import argparse

import torch

from purecompress import llm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the tiny decoder")
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

    result = llm.sparsegpt(model, calib, n_m="2:4")
    ppl = lambda p=None: llm.perplexity(model, corpus.held_out, params=p, seq_len=64)
    print(f"dense          perplexity {ppl():.3f}")
    print(f"sparsegpt 2:4  perplexity {ppl(result.params):.3f}")
    keep = result.masks["layers.0.mlp.up_proj.weight"].keep
    print("kept per group of 4:", sorted(set(keep.reshape(keep.shape[0], -1, 4).sum(-1).flatten().tolist())))

    if torch.cuda.is_available():
        half = model.to("cuda", torch.float16)
        params = {k: v.to("cuda", torch.float16) for k, v in result.params.items()}
        sparse = llm.to_semi_structured(params, result.masks)
        x = torch.randint(0, 256, (8, 64), device="cuda")
        dense_out = torch.func.functional_call(half, params, (x,))
        sparse_out = torch.func.functional_call(half, sparse, (x,))
        print("semi-structured vs masked dense, max abs diff:", float((dense_out - sparse_out).abs().max()))
    else:
        print("no CUDA: semi-structured kernels not tried")


if __name__ == "__main__":
    main()
