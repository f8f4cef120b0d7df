"""LLM one-shot compression: perplexity table, Wanda mask cost, SparseGPT/GPTQ time per layer, and
peak memory of the sequential pass versus holding every layer's activations.

Trains a tiny Llama-style decoder on the standard library's sources (one thread, about two
minutes), then prints the tables recorded in ``benchmarks/RESULTS.md``::

    python benchmarks/bench_llm.py            # full run
    python benchmarks/bench_llm.py --steps 50   # smoke run
    python benchmarks/bench_llm.py --speed-only # only the speed table (no training)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import environment, median_time, paired_ratio, table  # noqa: E402

import purecompress as pc  # noqa: E402
from purecompress import llm  # noqa: E402

SEQ = 64


def perplexity_table(steps: int) -> tuple[list[list[str]], list[str]]:
    corpus = llm.stdlib_corpus(2_000_000, 60_000)
    config = llm.DecoderConfig(dim=96, layers=3, heads=4, hidden=256)
    start = time.perf_counter()
    model = llm.train_decoder(config, corpus.train, steps=steps, batch=16, seq_len=SEQ, seed=0)
    train_s = time.perf_counter() - start
    calib = llm.calibration_batches(corpus.train, samples=64, seq_len=SEQ, batch=16, seed=1)
    params, targets = pc.params_of(model), llm.linear_weights(model)
    ppl = lambda p=None: llm.perplexity(model, corpus.held_out, params=p, seq_len=SEQ, batch=64)
    rows = [["dense", "-", f"{ppl():.3f}"],
            ["unigram baseline", "-", f"{llm.unigram_perplexity(corpus.train, corpus.held_out):.3f}"]]
    found = {}
    for label, n_m in (("50% unstructured", None), ("2:4", "2:4")):
        found[label, "magnitude"] = ppl(pc.apply_masks(params, llm.magnitude_masks(params, targets, n_m=n_m)))
        found[label, "wanda"] = ppl(llm.wanda(model, calib, n_m=n_m).params)
        found[label, "sparsegpt"] = ppl(llm.sparsegpt(model, calib, n_m=n_m).params)
        rows += [[name, label, f"{found[label, name]:.3f}"] for name in ("magnitude", "wanda", "sparsegpt")]
    for bits, group in ((4, 32), (3, 32), (4, None)):
        label = f"{bits}-bit, group {group or 'row'}"
        found[label, "rtn"] = ppl(llm.rtn(params, targets, bits=bits, group_size=group)[0])
        found[label, "gptq"] = ppl(llm.gptq(model, calib, bits=bits, group_size=group).params)
        rows += [[name, label, f"{found[label, name]:.3f}"] for name in ("rtn", "gptq")]
    checks = [f"trained {steps} steps in {train_s:.0f} s ({sum(p.numel() for p in model.parameters())} params)"]
    for label in ("50% unstructured", "2:4"):
        s, w, m = (found[label, k] for k in ("sparsegpt", "wanda", "magnitude"))
        checks.append(f"{label}: SparseGPT <= Wanda < magnitude: {s <= w < m}")
    for label in ("4-bit, group 32", "3-bit, group 32", "4-bit, group row"):
        checks.append(f"{label}: GPTQ < RTN: {found[label, 'gptq'] < found[label, 'rtn']}")
    return rows, checks


def speed_rows() -> list[list[str]]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 4096, generator=gen)
    norms = torch.rand(4096, generator=gen) + 0.1
    rows = []
    one_pass = lambda: w.abs().sum()
    unstructured = lambda: llm.allocate_per_row({"w": llm.wanda_metric(w, norms)}, 0.5)
    two_four = lambda: llm.allocate_n_m({"w": llm.wanda_metric(w, norms)}, 2, 4)
    base = median_time(one_pass)
    for label, fn in (("Wanda mask 4096x4096, 50% per row", unstructured), ("Wanda mask 4096x4096, 2:4", two_four)):
        rows.append([label, f"{median_time(fn) * 1e3:.1f} ms",
                     f"{paired_ratio(fn, one_pass, repeats=15):.1f}x one pass (w.abs().sum(), {base * 1e3:.1f} ms)"])
    selection = lambda: pc.keep_top(metric.score, 2048)
    metric = llm.wanda_metric(w, norms)
    rows.append(["  of which the per-row selection (keep_top, 50%)", f"{median_time(selection) * 1e3:.1f} ms",
                 f"{paired_ratio(selection, one_pass, repeats=15):.1f}x one pass"])
    for size in (1024, 2048):
        w = torch.randn(size, size, generator=gen)
        x = torch.randn(4 * size, size, generator=gen)
        h = x.T @ x
        for label, fn in (("SparseGPT 50%", lambda: llm.sparsegpt_prune(w, h)),
                          ("SparseGPT 2:4", lambda: llm.sparsegpt_prune(w, h, n_m="2:4")),
                          ("GPTQ 4-bit g128", lambda: llm.gptq_quantize(w, h, bits=4, group_size=128))):
            rows.append([f"{label}, {size}x{size} layer", f"{median_time(fn, repeats=2, warmup=0) * 1e3:.0f} ms", ""])
    return rows


def _memory_child(mode: str) -> None:
    """Run in a fresh interpreter: peak RSS growth of one calibration strategy (printed as JSON)."""
    torch.manual_seed(0)
    model = llm.TinyDecoder(llm.DecoderConfig(dim=256, layers=8, heads=4, hidden=768)).eval()
    calib = [torch.randint(0, 256, (16, 128)) for _ in range(8)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "sequential":
        llm.sparsegpt(model, calib, n_m="2:4")
    else:  # what a non-sequential implementation holds: every Linear's inputs, all layers at once
        held: dict[str, list[torch.Tensor]] = {}
        hooks = [m.register_forward_pre_hook(lambda m, a, n=n: held.setdefault(n, []).append(a[0].detach()))
                 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("layers")]
        with torch.no_grad():
            for batch in calib:
                model(batch)
        for h in hooks:
            h.remove()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "before_mib": base / 1024, "peak_mib": peak / 1024}))


def memory_rows() -> list[list[str]]:
    rows = []
    for mode in ("sequential", "all"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode], capture_output=True, text=True,
                             check=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        label = ("SparseGPT 2:4, sequential (one block at a time)" if mode == "sequential"
                 else "holding every Linear's inputs (all 8 blocks)")
        rows.append([label, f"{found['before_mib']:.0f} MiB", f"{found['peak_mib']:.0f} MiB"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--memory-child", choices=["sequential", "all"])
    parser.add_argument("--speed-only", action="store_true", help="only the speed table (no training)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    if args.speed_only:
        print("\n".join([environment(), "", table(["what", "time", "ratio"], speed_rows())]))
        return
    ppl_rows, checks = perplexity_table(args.steps)
    text = ["# LLM one-shot compression (bench_llm.py)", "", environment(), "",
            "## Held-out perplexity (byte-level decoder on stdlib sources, 64-byte windows, 64 calibration windows)",
            "", table(["method", "setting", "perplexity"], ppl_rows), "", *[f"- {c}" for c in checks], ""]
    print("\n".join(text), flush=True)
    speed = speed_rows()
    mem = memory_rows()
    more = ["## Speed (one thread)", "", table(["what", "time", "ratio"], speed), "",
            "## Peak memory (max RSS of a fresh process; 8-block dim-256 decoder, 128 windows of 128 tokens)", "",
            table(["calibration", "max RSS with the model built", "max RSS after calibration"], mem), ""]
    print("\n".join(more))


if __name__ == "__main__":
    main()
