"""One-shot compression of decoder language models: Wanda, SparseGPT, GPTQ, round-to-nearest, N:M.

Every algorithm is a pure function over a parameter dict, run block by block
(:func:`compress_sequential`): what a block's Linear layers need is collected from that block's
inputs, the block is compressed, and the *compressed* block's outputs feed the next one, so memory
is the model plus one block's activations. Results are new params, :class:`~purecompress.Mask` s
and :class:`~purecompress.quant.QuantParams`; the model is never written.

::

    model = train_decoder(DecoderConfig(), corpus.train, steps=500)
    calib = calibration_batches(corpus.train, samples=64, seq_len=128)
    result = sparsegpt(model, calib, n_m="2:4")
    perplexity(model, corpus.held_out, params=result.params)

Also here: a tiny Llama-style decoder and byte-level text from the standard library's sources,
for examples and tests that download nothing. The N:M allocator is core pruning
(``purecompress.pruning``); it is re-exported here until the pruning package exports it.
"""

from __future__ import annotations

from purecompress.llm._data import ByteCorpus, calibration_batches, random_windows, stdlib_corpus
from purecompress.llm._decoder import DecoderConfig, TinyDecoder, decoder_blocks
from purecompress.llm._gptq import gptq, gptq_quantize
from purecompress.llm._hessian import inverse_hessian_factor
from purecompress.llm._magnitude import linear_weights, magnitude_masks
from purecompress.llm._perplexity import perplexity, unigram_perplexity
from purecompress.llm._rtn import fake_quantize_weight, rtn, rtn_quantize, weight_qparams
from purecompress.llm._semi_structured import to_semi_structured
from purecompress.llm._sequential import BlockResult, LinearStats, SequentialResult, compress_sequential, linear_stats
from purecompress.llm._sparsegpt import sparsegpt, sparsegpt_prune
from purecompress.llm._train import train_decoder
from purecompress.llm._wanda import allocate_per_row, wanda, wanda_metric
from purecompress.pruning import allocate_n_m, gradual_n_m, n_m_keep, n_m_sparsity, parse_n_m

__all__ = [
    "BlockResult",
    "ByteCorpus",
    "DecoderConfig",
    "LinearStats",
    "SequentialResult",
    "TinyDecoder",
    "allocate_n_m",
    "allocate_per_row",
    "calibration_batches",
    "compress_sequential",
    "decoder_blocks",
    "fake_quantize_weight",
    "gptq",
    "gptq_quantize",
    "gradual_n_m",
    "inverse_hessian_factor",
    "linear_stats",
    "linear_weights",
    "magnitude_masks",
    "n_m_keep",
    "n_m_sparsity",
    "parse_n_m",
    "perplexity",
    "random_windows",
    "rtn",
    "rtn_quantize",
    "sparsegpt",
    "sparsegpt_prune",
    "stdlib_corpus",
    "to_semi_structured",
    "train_decoder",
    "unigram_perplexity",
    "wanda",
    "wanda_metric",
    "weight_qparams",
]
