"""Quantize a small byte-level decoder's weights to 4 bits with GPTQ and save the scales.

Compares GPTQ with round-to-nearest at the same group size, and writes the quantization
parameters with ``purecompress.quant.save_quant_params`` (safetensors, nothing pickled).

    python examples/llm_gptq.py --steps 400 --bits 4 --group-size 32
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import purecompress as pc
import purecompress.quant as pq
from purecompress import llm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps of the tiny decoder")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "llm_gptq.safetensors"))
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

    result = llm.gptq(model, calib, bits=args.bits, group_size=args.group_size)
    rtn_params, _ = llm.rtn(pc.params_of(model), llm.linear_weights(model), bits=args.bits,
                            group_size=args.group_size)
    ppl = lambda p=None: llm.perplexity(model, corpus.held_out, params=p, seq_len=64)
    print(f"dense                 perplexity {ppl():.3f}")
    print(f"round-to-nearest {args.bits}-bit perplexity {ppl(rtn_params):.3f}")
    print(f"gptq {args.bits}-bit             perplexity {ppl(result.params):.3f}")

    pq.save_quant_params(args.out, result.qparams, metadata={"group_size": str(args.group_size)})
    print(f"saved {len(pq.load_quant_params(args.out))} tensors' quantization parameters to {args.out}")


if __name__ == "__main__":
    main()
