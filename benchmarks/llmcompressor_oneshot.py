"""llm-compressor's one-shot pruning (SparseGPT, Wanda, magnitude; optionally then GPTQ int4)
of a Hugging Face causal LM or encoder on given token sequences, for
experiments/smollm2_oneshot.py and benchmarks/minilm_llmcompressor.py.

    python benchmarks/llmcompressor_oneshot.py --venv .venv-llmcompressor --model FOLDER \
        --calib calib.safetensors --method sparsegpt --pattern 0.5 [--bits 4] --out W.safetensors

Run with prunekit's own interpreter, it creates ``--venv`` the first time (torch 2.13.0 CPU
from constraints.txt, then llmcompressor 0.14.0.1 with its dependencies: the project never
depends on it) and runs itself inside it. There it loads the model in float32, feeds
llm-compressor's ``oneshot`` exactly the token windows of ``--calib`` (``input_ids`` of shape
samples x seqlen, not shuffled, no padding, ``--batch-size`` at a time; with ``lengths`` in
the file, row i is its first lengths[i] tokens: sequences of different lengths, which are fed
one at a time so that nothing is padded), and writes the pruned weights of every Linear inside
the blocks to ``--out``. ``--kind encoder`` loads ``AutoModel`` (a BERT-like encoder; its
pooler is left dense, as prunekit does). The last line of stdout is JSON: the seconds ``oneshot`` took,
the sparsity reached and the versions.

Recipes: sparsegpt -> ``SparseGPTModifier(sparsity, mask_structure, block_size=128,
dampening_frac=0.01)``; wanda -> ``WandaPruningModifier(sparsity, mask_structure)``; magnitude: none (see ``MAGNITUDE``);
``--bits 4`` adds ``GPTQModifier`` W4A16 (symmetric int4, groups of ``--group``) after the
pruning (llm-compressor has no joint pruning + quantization sweep, and its GPTQ updates do not
keep the pruning mask: the sparsity printed shows how much of it is left). ``lm_head`` is never
touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
#: Why there is no llm-compressor magnitude row (measured with llmcompressor 0.14.0.1).
MAGNITUDE = ("llm-compressor has no one-shot magnitude pruning: MagnitudePruningModifier is a "
             "training-schedule modifier, and under oneshot (init = final sparsity 0.5, start 0, "
             "end 1) it left SmolLM2's block weights dense (0.03 % zeros)")


def ensure_venv(venv: Path) -> Path:
    """The interpreter of ``venv``, created with llm-compressor if it is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {LLMCOMPRESSOR} (a few minutes, once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, LLMCOMPRESSOR], check=True)
    return python


def recipe(method: str, pattern: str, bits: int | None, group: int):
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.obcq import SparseGPTModifier

    if ":" in pattern:  # N:M keeps N of every M
        n, m = map(int, pattern.split(":"))
        sparsity, structure = 1 - n / m, pattern
    else:
        sparsity, structure = float(pattern), "0:0"
    targets, ignore = ["Linear"], ["re:.*lm_head", "re:.*pooler.*"]
    if method == "sparsegpt":
        mods = [SparseGPTModifier(sparsity=sparsity, mask_structure=structure, block_size=128,
                                  dampening_frac=0.01, targets=targets, ignore=ignore)]
    elif method == "wanda":
        mods = [WandaPruningModifier(sparsity=sparsity, mask_structure=structure,
                                     targets=targets, ignore=ignore)]
    elif method == "magnitude":
        raise SystemExit(MAGNITUDE)
    else:
        raise SystemExit(f"unknown --method {method!r}")
    if bits:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        scheme = QuantizationScheme(targets=targets, weights=QuantizationArgs(
            num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group))
        mods.append(GPTQModifier(config_groups={"group_0": scheme}, ignore=ignore,
                                 block_size=128, dampening_frac=0.01))
    return mods


def run(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from loguru import logger
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    import llmcompressor
    from llmcompressor import oneshot

    torch.manual_seed(0)
    calib = load_file(args.calib)
    ids = calib["input_ids"]
    lengths = calib.get("lengths")
    rows = (ids.tolist() if lengths is None
            else [r[:n].tolist() for r, n in zip(ids, lengths.tolist())])
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    auto = AutoModel if args.kind == "encoder" else AutoModelForCausalLM
    model = auto.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    mods = recipe(args.method, args.pattern, args.bits, args.group)
    batch_size = 1 if lengths is not None else args.batch_size  # never padded
    t0 = time.perf_counter()
    oneshot(model=model, tokenizer=tokenizer, dataset=data, recipe=mods,
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1],
            shuffle_calibration_samples=False, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.search(r"\.layers?\.\d+\.", name):
            # .cpu(): on a GPU, llm-compressor's offloading hands back the weight onloaded
            weights[name] = module.weight.detach().float().cpu().contiguous()
    save_file(weights, args.out)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    print(json.dumps({"seconds": round(seconds, 1), "sparsity": round(zeros / total, 4),
                      "batch_size": batch_size,
                      "llmcompressor": llmcompressor.__version__,
                      "torch": torch.__version__,
                      "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                      else "cpu"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv-llmcompressor"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", choices=("causal", "encoder"), default="causal")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--method", required=True, choices=("sparsegpt", "wanda"))
    ap.add_argument("--pattern", required=True, help="a sparsity such as 0.5, or N:M")
    ap.add_argument("--bits", type=int)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8,
                    help="windows per forward pass (prunekit's calibration batches hold 8)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        python = ensure_venv(Path(args.venv))
        env = {**os.environ, "PYTHONPATH": ""}
        sys.exit(subprocess.run([str(python), __file__, *sys.argv[1:]], env=env).returncode)
    run(args)


if __name__ == "__main__":
    main()
