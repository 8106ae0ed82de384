"""One process against N gloo processes under torchrun, on the same CPU cores.

Builds (once, cached in --workdir) a random Llama-style checkpoint with a locally trained BPE
tokenizer, then prunes it with SparseGPT alternately in one process (with all the cores as
threads) and under ``torchrun --nproc-per-node N`` (one thread each), --repeats times each.
Prints the median wall times and their ratio, and compares the outputs: masks that agree and
the largest relative weight difference (the Hessian sums differ only in their order); as a
baseline, one process on one thread against one process on all cores (the same maths, other
summation orders inside the BLAS).

On a machine with few cores this measures the cost of the process split (statistics
all-reduced, layer solves shared out, weights broadcast), not a speed-up from more hardware.

    python benchmarks/distributed_prune.py [--nproc 2] [--repeats 3] [--layers 8 --hidden 768]
        [--hessian-dtype float64] [--stream]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/prunekit-distributed")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--stream", action="store_true", help="prune with --stream in both runs")
    ap.add_argument("--hessian-dtype", default="float32", choices=("float32", "float64"))
    return ap.parse_args()


def build(folder: Path, args: argparse.Namespace) -> None:
    """A random Llama with a BPE tokenizer trained on the stdlib's pydoc topics."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(list(topics.values()), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=len(fast),
                         max_position_embeddings=512, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def mean_error(out: Path) -> float:
    """Mean over layers of the relative reconstruction error the run reported."""
    import json

    layers = json.loads((out / "prune_report.json").read_text())["layers"]
    return sum(r["rel_error"] for r in layers) / len(layers)


def compare(a: Path, b: Path) -> tuple[float, float]:
    """(fraction of weights whose zero/non-zero state agrees, largest relative difference)."""
    import prunekit

    sa, sb = prunekit.load(a).model.state_dict(), prunekit.load(b).model.state_dict()
    agree = sum(int(((sa[k] == 0) == (sb[k] == 0)).sum()) for k in sa)
    total = sum(sa[k].numel() for k in sa)
    rel = max(float((sa[k] - sb[k]).abs().max() / sa[k].abs().max().clamp_min(1e-12))
              for k in sa)
    return agree / total, rel


def main() -> None:
    args = parse_args()
    work = Path(args.workdir)
    model = work / f"llama-{args.layers}x{args.hidden}"
    if not (model / "config.json").exists():
        build(model, args)
    common = [str(model), "--method", "sparsegpt", "--sparsity", "0.5", "--samples",
              str(args.samples), "--seqlen", str(args.seqlen), "--batch-size",
              str(args.batch_size), "--quiet", "--overwrite",
              "--hessian-dtype", args.hessian_dtype,
              *(["--stream"] if args.stream else ["--no-eval"])]
    one = [sys.executable, "-m", "prunekit.cli", "prune", *common, "--out", str(work / "one")]
    many = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={args.nproc}", "-m", "prunekit.cli", "prune", *common,
            "--out", str(work / "many")]
    cores = os.cpu_count() or 1
    t_one, t_many = [], []
    for _ in range(args.repeats):  # alternated, so drifts of a shared machine hit both
        t_one.append(run(one, cores))
        t_many.append(run(many, max(1, cores // args.nproc)))
    agree, rel = compare(work / "one", work / "many")
    threads = [sys.executable, "-m", "prunekit.cli", "prune", *common, "--out",
               str(work / "one-thread")]
    run(threads, 1)  # the baseline of what another summation order does in one process
    agree_threads, rel_threads = compare(work / "one", work / "one-thread")
    m1, mn = statistics.median(t_one), statistics.median(t_many)
    print(f"torch {torch.__version__}, {cores} cores; Llama {args.layers} x {args.hidden} "
          f"(intermediate {args.intermediate}); SparseGPT 50 %, {args.samples} x {args.seqlen} "
          f"tokens{' streamed' if args.stream else ''}; {args.repeats} runs each, alternated")
    print("| run | median wall s | all runs |")
    print("|---|---|---|")
    print(f"| 1 process, {cores} threads | {m1:.1f} | {', '.join(f'{t:.1f}' for t in t_one)} |")
    print(f"| {args.nproc} gloo processes, {max(1, cores // args.nproc)} thread(s) each | "
          f"{mn:.1f} | {', '.join(f'{t:.1f}' for t in t_many)} |")
    print(f"ratio {args.nproc} processes / 1 process: {mn / m1:.2f}")
    print(f"{args.nproc} processes against 1: masks agree on {agree:.4%} of weights, largest "
          f"relative weight difference {rel:.2e}")
    print(f"baseline, 1 process on 1 thread against {cores} threads: masks agree on "
          f"{agree_threads:.4%}, largest relative difference {rel_threads:.2e}")
    print(f"mean relative reconstruction error of the layers: 1 process "
          f"{mean_error(work / 'one'):.6f}, {args.nproc} processes {mean_error(work / 'many'):.6f}, "
          f"1 thread {mean_error(work / 'one-thread'):.6f}")


if __name__ == "__main__":
    main()
