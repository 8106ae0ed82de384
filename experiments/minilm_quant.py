"""Quantization, alone and with pruning, on the packaged all-MiniLM-L6-v2: embedding fidelity
on held-out text for int8 RTN, int4 RTN, int4 GPTQ, int4 AWQ, 50 % SparseGPT + int4 (joint and
two-step), and 2:4 + int4, beside the dense model and pruning alone.

    python experiments/minilm_quant.py [--samples 128] [--seqlen 128] [--group 128] [--out docs]

Protocol: every run starts from the same dense model and the same calibration batches
(``--samples`` sequences of ``--seqlen`` tokens from the built-in stdlib corpus, seed 0); the
36 Linear layers of the encoder are compressed (embeddings and pooler stay float32). Fidelity
is measured on 200 held-out passages of the corpus, never used for calibration: the mean
cosine between the dense and the compressed model's sentence embeddings, and how often a
passage's nearest neighbour among the others stays the same. Bits per weight count the codes
and their float16 scales (and zero points for asymmetric grids), zeros stored densely.
Writes docs/experiments/minilm_quant.{md,json}. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunekit import api
from prunekit.formats.load import load_model
from prunekit.patterns import NM, Unstructured
from prunekit.quant import QuantSpec
import prunekit.models.adapter as adapter
import prunekit.data.calibration as calibration_mod
import prunekit.plan as plan
import prunekit.eval.protocol as protocol
import prunekit.run as run


def runs(group: int | None):
    int4 = QuantSpec(4, group)
    return [  # (label, method, pattern, settings)
        ("dense float32", None, None, None),
        ("int8 RTN (per channel)", "rtn", None, {"quant": QuantSpec(8, None)}),
        ("int4 RTN", "rtn", None, {"quant": int4}),
        ("int4 GPTQ", "gptq", None, {"quant": int4}),
        ("int4 GPTQ act-order", "gptq", None, {"quant": int4, "act_order": True}),
        ("int4 AWQ", "awq", None, {"quant": int4}),
        ("int4 AWQ + GPTQ", "awq", None, {"quant": int4, "solver": "gptq"}),
        ("50 % SparseGPT", "sparsegpt", Unstructured(0.5, "layer"), {}),
        ("50 % SparseGPT + int4, joint", "sparsegpt", Unstructured(0.5, "layer"), {"quant": int4}),
        ("50 % SparseGPT, then int4 GPTQ", "sparsegpt", Unstructured(0.5, "layer"),
         {"quant": int4, "joint": False}),
        ("50 % SparseGPT, then int4 RTN", "sparsegpt", Unstructured(0.5, "layer"),
         {"quant": int4, "joint": False, "quant_method": "rtn"}),
        ("2:4 SparseGPT", "sparsegpt", NM(2, 4), {}),
        ("2:4 SparseGPT + int4, joint", "sparsegpt", NM(2, 4), {"quant": int4}),
        ("2:4 SparseGPT, then int4 GPTQ", "sparsegpt", NM(2, 4), {"quant": int4, "joint": False}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--only", nargs="*", help="labels to run (default: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model("minilm")
    batches = calibration_mod.calibration(loaded.tokenizer, "stdlib", args.samples, args.seqlen, 8, 0,
                              adapter.max_positions(loaded.model))
    measure = protocol.prepare_evaluation(loaded, "stdlib", args.seqlen, "cpu")
    info = {"source": "stdlib", "samples": args.samples, "seqlen": args.seqlen, "seed": 0,
            "tokens": args.samples * args.seqlen}
    rows = []
    for label, method, pattern, settings in runs(args.group):
        if args.only and label not in args.only:
            continue
        t = time.perf_counter()
        if method is None:
            ev, bits, sparsity, seconds, err = measure(loaded.model), 32.0, 0.0, 0.0, 0.0
        else:
            cfg = plan.make_config(method, settings)
            report = run.run_one(run.copy_model(loaded), method, pattern, batches,
                                 calibration_info=info, config=cfg, measure=measure)
            ev, bits = report.evaluation, report.bits_per_weight or 32.0
            sparsity, seconds = report.target_sparsity, report.seconds["prune"]
            err = report.mean_rel_error
        rows.append({"run": label, "method": method, "pattern": str(pattern or "dense"),
                     "settings": {k: str(v) for k, v in (settings or {}).items()},
                     "sparsity": sparsity, "bits_per_weight": bits, "cosine": ev["cosine"],
                     "nn_agreement": ev["nn_agreement"], "mean_rel_error": err,
                     "seconds": seconds})
        print(f"{label:34s} sparsity {sparsity:6.1%}  bits/w {bits:6.3f}  cosine "
              f"{ev['cosine']:.4f}  NN {ev['nn_agreement']:.1%}  err {err:.4f}  "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    out = Path(args.out) / "experiments"
    out.mkdir(parents=True, exist_ok=True)
    (out / "minilm_quant.json").write_text(json.dumps(
        {"protocol": info | {"n_texts": 200, "group": args.group}, "runs": rows}, indent=2) + "\n")
    lines = ["| run | sparsity | bits/weight | cosine | NN agreement | mean layer rel. error | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['sparsity']:.1%} | {r['bits_per_weight']:.3f} | "
                     f"{r['cosine']:.4f} | {r['nn_agreement']:.1%} | {r['mean_rel_error']:.4f} | "
                     f"{r['seconds']:.1f} |")
    (out / "minilm_quant.md").write_text(
        f"# MiniLM: quantization and pruning + quantization\n\n"
        f"`python experiments/minilm_quant.py --samples {args.samples} --seqlen {args.seqlen} "
        f"--group {args.group}`; calibration {args.samples} x {args.seqlen} tokens of the "
        "built-in stdlib corpus (seed 0); fidelity on 200 held-out passages.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
