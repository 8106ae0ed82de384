"""llm-compressor's own GPTQ on one weight matrix, for benchmarks/gptq_layer.py --llmcompressor.

Needs an environment with llmcompressor (measured with llmcompressor 0.14.0.1,
compressed-tensors 0.19.0, torch 2.13.0+cpu), kept apart from prunekit's own:

    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install -c constraints.txt torch==2.13.0 \
        && /tmp/llmc/bin/pip install -c constraints.txt llmcompressor && /tmp/llmc/bin/pip install --no-deps -e .
    /tmp/llmc/bin/python benchmarks/gptq_layer.py --llmcompressor benchmarks/llmcompressor_gptq.py

This mirrors exactly what GPTQModifier.compress_module_list does for one Linear:
  1. scales / zero points come from the module's weight observer
     (default for weights: "memoryless_minmax"), computed ONCE on the original W
     before GPTQ runs (llmcompressor >= 0.9 behaviour; classic GPTQ instead recomputes
     each group's scale on the error-updated weights when it reaches the group);
  2. the Hessian is the normalised one: accumulate_hessian adds 2*x x^T per sample and
     prepare_batch divides by num_samples, i.e. H = 2/N X^T X;
  3. quantize_weight(weights[B,out,in], hessians[B,in,in], scale, zero_point,
     global_scale, quant_args, blocksize=128, percdamp=0.01) with batch B = 1.
It returns the fake-quantised (dequantised) weight, which GPTQModifier writes back
into module.weight.
"""
import logging
import os
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("LLMCOMPRESSOR_DISABLE_GPTQ_TRITON", "1")  # CPU anyway

from loguru import logger  # noqa: E402

logger.remove()  # llmcompressor logs "No accelerator available!" etc. on import
logger.add(sys.stderr, level="ERROR")

from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight  # noqa: E402
from llmcompressor.observers import Observer  # noqa: E402


def make_quant_args(bits=4, group=128, actorder=None):
    """group=None or group<=0 -> per-channel; otherwise group-wise. symmetric INT."""
    if group is None or group <= 0:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                                strategy="channel", actorder=actorder)
    return QuantizationArgs(num_bits=bits, type="int", symmetric=True,
                            strategy="group", group_size=group, actorder=actorder)


@torch.no_grad()
def llmc_gptq(W: torch.Tensor, H: torch.Tensor, bits=4, group=128, *,
              actorder=None, blocksize=128, percdamp=0.01,
              observer="memoryless_minmax", return_extra=False) -> torch.Tensor:
    """llm-compressor GPTQ on one Linear weight.

    W: [out, in] weight. H: [in, in] normalised Hessian (2/N X^T X), float32.
    group: group size along `in`; None/0 -> per-channel ("channel" strategy).
    actorder: None (plain GPTQ) or "weight"/"static" (GPTQModifier's default).
    Returns the fake-quantised weight (same shape/dtype as W).
    """
    qargs = make_quant_args(bits, group, actorder)
    # Weight observer, as QuantizationMixin attaches it (initialize_observer).
    obs = Observer.load_from_registry(observer, base_name="weight", args=qargs)
    obs(W)
    qp = obs.get_qparams()  # {"scale": [out, n_groups], "zero_point": ..., "global_scale": None}
    # quantize_weight works in place on fp32 inputs -> pass disposable copies.
    weights = W.detach().to(torch.float32).clone().unsqueeze(0)
    hessians = H.detach().to(torch.float32).clone().unsqueeze(0)
    q, loss, rtn_fallback = quantize_weight(
        weights=weights,
        hessians=hessians,
        scale=qp["scale"].unsqueeze(0),
        zero_point=qp["zero_point"].unsqueeze(0),
        global_scale=None,
        quant_args=qargs,
        blocksize=blocksize,
        percdamp=percdamp,
    )
    out = q[0].to(W.dtype)
    if return_extra:
        return out, {"loss": loss.item(), "rtn_fallback": bool(rtn_fallback.item()),
                     "scale": qp["scale"], "zero_point": qp["zero_point"]}
    return out
