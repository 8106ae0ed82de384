"""SmolLM2-135M (the built-in ``smollm2``) pruned three ways with the same calibration: in
memory, streamed block by block (``--stream``), and by two gloo processes under ``torchrun``;
the outputs compared and the peak memory of each run recorded.

    python benchmarks/smollm2_stream_distributed.py [--samples 128] [--seqlen 512]
        [--method sparsegpt] [--sparsity 0.5] [--calib wiki] [--hessian-dtype float32]
        [--runs memory,stream,torchrun] [--workdir DIR]

The in-memory run is the README's command as a user types it (``prunekit prune smollm2
--method sparsegpt --sparsity 0.5 --calib wiki --out DIR``, with its perplexity before and
after); the torchrun run also evaluates (on rank 0), the streamed run skips the evaluation.
``--hessian-dtype float64`` accumulates the Hessians and solves in float64 in every run, which
shows whether the torchrun difference is the rounding of the float32 sums. ``--runs`` picks
runs; the comparisons need the in-memory run. Streamed and in-memory pruning do the same
arithmetic in the same order, so their checkpoints should be identical bit for bit. Under
torchrun each process accumulates the Hessian of its half of the batches and the halves are
summed (all-reduce), so the float32 sums differ in their last bits: the masks may differ at
near-ties. The comparison reports identical tensors, mask agreement and the largest weight
difference. Peak memory: ``ru_maxrss`` of each run (for torchrun, the largest of its
processes) and the peak ``RssAnon`` of the command's own process sampled from /proc (for
torchrun that is the launcher; its ranks are each like the ru_maxrss figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_memory import MIB, Run, measure, runs_table  # noqa: E402  (a sibling script)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/prunekit-smollm2-stream")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--sparsity", default="0.5")
    ap.add_argument("--calib", default="wiki")
    ap.add_argument("--hessian-dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--runs", default="memory,stream,torchrun",
                    help="comma-separated subset of memory, stream, torchrun")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between /proc samples")
    return ap.parse_args()


def prune_args(args: argparse.Namespace, out: Path) -> list[str]:
    return ["prune", "smollm2", "--method", args.method, "--sparsity", args.sparsity,
            "--calib", args.calib, "--samples", str(args.samples), "--seqlen",
            str(args.seqlen), "--hessian-dtype", args.hessian_dtype, "--out", str(out),
            "--overwrite"]


def compare(a: Path, b: Path) -> dict:
    """Identical tensors, mask agreement over the pruned layers, largest |a - b|."""
    import torch

    import prunekit

    sa, sb = prunekit.load(a).model.state_dict(), prunekit.load(b).model.state_dict()
    same = agree = total = 0
    worst = 0.0
    for name in sorted(set(sa) & set(sb)):
        x, y = sa[name], sb[name]
        same += bool(torch.equal(x, y))
        worst = max(worst, (x.double() - y.double()).abs().max().item())
        if name.endswith(".weight") and ".layers." in name and x.dim() == 2:
            agree += int(((x == 0) == (y == 0)).sum())
            total += x.numel()
    return {"identical": same, "tensors": len(set(sa) | set(sb)),
            "mask_agreement": agree / total if total else float("nan"), "max_abs_diff": worst}


def main() -> None:
    args = parse_args()
    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "prunekit.cli"]
    torchrun = [shutil.which("torchrun") or "torchrun", "--standalone",
                f"--nproc-per-node={args.nproc}", "-m", "prunekit.cli"]
    plans = {"memory": ("in memory (README command)", cli + prune_args(args, work / "memory")),
             "stream": ("streamed (--stream)", cli + prune_args(args, work / "stream")
                        + ["--stream", "--restart", "--no-eval"]),
             "torchrun": (f"torchrun, {args.nproc} gloo processes",
                          torchrun + prune_args(args, work / "torchrun"))}
    chosen = [k.strip() for k in args.runs.split(",") if k.strip()]
    unknown = sorted(set(chosen) - set(plans))
    if unknown or not chosen:
        raise SystemExit(f"--runs {args.runs!r}: choose among {', '.join(plans)}")
    runs: dict[str, Run] = {}
    for key in chosen:
        name, argv = plans[key]
        runs[key] = measure(name, argv, None, env, work / f"{key}.log", args.poll)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; smollm2, {args.method} "
          f"{args.sparsity}, {args.samples} x {args.seqlen} tokens of {args.calib}, Hessian "
          f"{args.hessian_dtype}")
    print(runs_table(list(runs.values())))
    for key in ("memory", "torchrun"):
        if key in runs and not runs[key].rc:
            print(f"\n{runs[key].name}, last lines:\n" + last_lines(work / f"{key}.log"))
    base = runs.get("memory")
    if base is None or base.rc:
        raise SystemExit("no comparison: the in-memory run was not run or failed"
                         + (f": {base.tail(5)}" if base is not None else ""))
    for key in ("stream", "torchrun"):
        run = runs.get(key)
        if run is None:
            continue
        if run.rc:
            print(f"\n{run.name}: {run.outcome()}: {run.tail(5)}")
            continue
        c = compare(work / "memory", work / key)
        print(f"\n{run.name} against in memory: {c['identical']} of {c['tensors']} tensors "
              f"identical, masks agree on {c['mask_agreement']:.6%} of the block weights, "
              f"max abs diff {c['max_abs_diff']:.3g}; peak RSS {run.maxrss / MIB:,.0f} MiB "
              f"against {base.maxrss / MIB:,.0f} MiB")


def last_lines(log: Path, n: int = 14) -> str:
    """The last ``n`` lines of a run's log, progress-bar redraws reduced to their final state."""
    lines = log.read_text(errors="replace").strip().splitlines()[-n:]
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


if __name__ == "__main__":
    main()
