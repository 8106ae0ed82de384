"""all-MiniLM-L6-v2 pruned by prunekit and by llm-compressor from the same calibration tokens,
judged on held-out text of other domains: the side-by-side table of docs/one-shot-pruning.md.

    python benchmarks/minilm_llmcompressor.py [--calib stdlib] [--samples 128] [--seqlen 128]
        [--patterns 0.5 2:4] [--methods sparsegpt wanda] [--only prunekit|llmcompressor]
        [--out docs/experiments/minilm_llmcompressor]

Calibration: ``--samples`` sequences of at most ``--seqlen`` tokens of ``--calib`` (seed 0),
made by each of prunekit's protocols: ``windows`` (random windows of the token stream, each
``[CLS] … [SEP]``) and ``documents`` (one document per sequence, padded; padding left out of
every statistic). llm-compressor 0.14.0.1 (in its own virtual environment, created by
``benchmarks/llmcompressor_oneshot.py``) gets the very same token sequences, unpadded, one at a
time. Evaluation, the same for both tools: mean cosine between the dense and the pruned model's
sentence embeddings of 200 held-out passages of ``wiki`` and of ``bbc`` (the calibration's own
source is never among them), and the accuracy of a linear probe on the BBC News topics (the
``--eval-task bbc`` of prunekit).

Rows: llm-compressor SparseGPT / Wanda per protocol; prunekit per protocol and per
``--sequential`` mode (block, true) for each method. Time: ``prune s`` is the pruning alone (the
model loaded and the tokens ready: llm-compressor's ``oneshot`` call; prunekit's sequential
run), measured beside other work; ``--only timing`` measures, with nothing else running,
llm-compressor's ``oneshot`` call against the whole ``prunekit prune minilm ...`` command
(load, tokenise, prune; ``--no-eval``) of each of ``--methods``, medians of ``--repeats``
interleaved runs. Records every row in
``{--out}.json`` (with the command) and a table in ``{--out}.md``; rows already recorded are
kept (``--force`` measures them again).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prunekit.data.calibration import calibration
from prunekit.eval.protocol import prepare_evaluation, prepare_task
from prunekit.formats.load import load_model
from prunekit.models.loaders import minilm_path
from prunekit.plan import make_plan
from prunekit.run import calibration_info, run_one

ROOT = Path(__file__).resolve().parent.parent
LLMC = ROOT / "benchmarks" / "llmcompressor_oneshot.py"


def token_file(batches: list[dict[str, torch.Tensor]], path: Path) -> None:
    """The calibration sequences as llm-compressor's runner reads them: ids padded, lengths."""
    width = max(b["input_ids"].shape[1] for b in batches)
    ids, lengths = [], []
    for b in batches:
        for row, mask in zip(b["input_ids"], b["attention_mask"]):
            n = int(mask.sum())
            ids.append(torch.nn.functional.pad(row[:n], (0, width - n)))
            lengths.append(n)
    save_file({"input_ids": torch.stack(ids), "lengths": torch.tensor(lengths)}, str(path))


def llmcompressor_weights(method: str, pattern: str, calib: Path, out: Path) -> tuple[dict, dict]:
    cmd = [sys.executable, str(LLMC), "--kind", "encoder", "--model", str(minilm_path()),
           "--calib", str(calib), "--method", method, "--pattern", pattern, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llm-compressor failed:\n{proc.stderr[-3000:]}")
    return load_file(str(out)), json.loads(proc.stdout.strip().splitlines()[-1])


def cli_seconds(method: str, pattern: str, args: argparse.Namespace) -> float:
    """Wall time of the whole prunekit command with its defaults (no evaluation)."""
    cmd = [sys.executable, "-m", "prunekit", "prune", "minilm", "--method", method,
           "--pattern", pattern, "--calib", args.calib, "--samples", str(args.samples),
           "--seqlen", str(args.seqlen), "--no-eval", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", default="stdlib")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--patterns", nargs="+", default=["0.5", "2:4"])
    ap.add_argument("--methods", nargs="+", default=["sparsegpt", "wanda"])
    ap.add_argument("--protocols", nargs="+", default=["windows", "documents"])
    ap.add_argument("--sequential", nargs="+", default=["block", "true"])
    ap.add_argument("--only", choices=("prunekit", "llmcompressor", "timing"))
    ap.add_argument("--repeats", type=int, default=3, help="timing: interleaved runs of each")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="calibration sampling seed (rows of "
                    "another seed than 0 are keyed with it)")
    ap.add_argument("--no-probe", action="store_true", help="skip the BBC linear probe")
    ap.add_argument("--out", default=str(ROOT / "docs" / "experiments" / "minilm_llmcompressor"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_file = out.with_suffix(".json")
    record = json.loads(record_file.read_text()) if record_file.exists() else {"rows": {}}
    record["protocol"] = {
        "calib": args.calib, "samples": args.samples, "seqlen": args.seqlen,
        "evaluation": "mean cosine of dense vs pruned sentence embeddings, 200 held-out passages "
                      "of wiki and of bbc; linear-probe accuracy on BBC News topics",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads"}
    command = shlex.join(["python", "benchmarks/minilm_llmcompressor.py", *sys.argv[1:]])

    def save() -> None:
        record_file.write_text(json.dumps(record, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(record))

    loaded = load_model("minilm", torch.float32)
    evals = {src: prepare_evaluation(loaded, src, 128, "cpu") for src in ("wiki", "bbc")}
    probe = None if args.no_probe else prepare_task(loaded, "bbc", "cpu")

    def measure(model) -> dict:
        got = {f"cosine_{s}": round(f(model)["cosine"], 4) for s, f in evals.items()}
        if probe is None:
            return got
        return {**got, "bbc_probe": round(probe(model)["probe_accuracy"], 4)}

    if probe is not None:
        record["dense"] = {"bbc_probe": round(probe(loaded.model)["dense_probe_accuracy"], 4)}
    seed = "" if args.seed == 0 else f" / seed {args.seed}"
    for protocol in args.protocols:
        batches = calibration(loaded.tokenizer, args.calib, args.samples, args.seqlen, 8,
                              args.seed, 512, protocol=protocol)
        info = calibration_info(args.calib, args.samples, args.seqlen, args.seed, protocol,
                                batches)
        for method in args.methods:
            for pattern in args.patterns:
                if args.only in (None, "llmcompressor"):
                    key = f"llm-compressor {method} {pattern} / {protocol}{seed}"
                    if key not in record["rows"] or args.force:
                        with tempfile.TemporaryDirectory() as tmp:
                            token_file(batches, Path(tmp) / "calib.safetensors")
                            weights, meta = llmcompressor_weights(
                                method, pattern, Path(tmp) / "calib.safetensors",
                                Path(tmp) / "w.safetensors")
                        model = copy.deepcopy(loaded.model)
                        with torch.no_grad():
                            for name, w in weights.items():
                                model.get_submodule(name).weight.copy_(w)
                        record["rows"][key] = {**measure(model), "prune_s": meta["seconds"],
                                               "sparsity": meta["sparsity"],
                                               "tokens": info["tokens"], "command": command,
                                               "version": meta["llmcompressor"]}
                        print(key, record["rows"][key], flush=True)
                        save()
                if args.only in (None, "prunekit"):
                    for seq in args.sequential:
                        key = f"prunekit {method} {pattern} / {protocol} / {seq}{seed}"
                        if key in record["rows"] and not args.force:
                            continue
                        plan = make_plan(method, pattern, {"sequential": seq}, kind="prune")
                        work = copy.deepcopy(loaded)
                        report = run_one(work, plan, batches, calibration_info=info,
                                         measure=measure)
                        record["rows"][key] = {**report.evaluation,
                                               "prune_s": round(report.seconds["prune"], 1),
                                               "sparsity": round(report.target_sparsity, 4),
                                               "tokens": info["tokens"], "command": command}
                        print(key, record["rows"][key], flush=True)
                        save()
    if args.only in (None, "timing"):
        timing(args, loaded, record, command)
    save()


def timing(args: argparse.Namespace, loaded, record: dict, command: str) -> None:
    """Medians of ``--repeats`` interleaved runs: llm-compressor's ``oneshot`` call alone
    (SparseGPT, the same token windows the CLI's default protocol draws) against the whole
    ``prunekit prune`` command of each method, nothing else running."""
    batches = calibration(loaded.tokenizer, args.calib, args.samples, args.seqlen, 8, 0, 512)
    for pattern in args.patterns:
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                token_file(batches, Path(tmp) / "calib.safetensors")
                _, meta = llmcompressor_weights("sparsegpt", pattern,
                                                Path(tmp) / "calib.safetensors",
                                                Path(tmp) / "w.safetensors")
            times.setdefault("llm-compressor sparsegpt oneshot", []).append(meta["seconds"])
            for method in args.methods:
                times.setdefault(f"prunekit prune --method {method} (whole command)",
                                 []).append(cli_seconds(method, pattern, args))
        record.setdefault("timing", {})[pattern] = {
            k: {"median_s": round(statistics.median(v), 1), "runs": [round(t, 1) for t in v]}
            for k, v in times.items()}
        record["timing_command"] = command
        print(pattern, record["timing"][pattern], flush=True)


def markdown(record: dict) -> str:
    p = record["protocol"]
    lines = ["# all-MiniLM-L6-v2: prunekit and llm-compressor on the same calibration tokens", "",
             f"Generated by `benchmarks/minilm_llmcompressor.py` ({p['samples']} sequences of at "
             f"most {p['seqlen']} tokens of `{p['calib']}`, seed 0 unless the row names "
             f"another; {p['evaluation']}; "
             f"{p['machine']}). Dense BBC probe accuracy: "
             f"{record.get('dense', {}).get('bbc_probe', '–')}.", "",
             "| run | tokens | sparsity | cosine wiki | cosine bbc | BBC probe | prune s |",
             "|---|---|---|---|---|---|---|"]
    for key, r in record["rows"].items():
        probe = f"{r['bbc_probe']:.4f}" if "bbc_probe" in r else "–"
        lines.append(f"| {key} | {r['tokens']} | {r['sparsity']:.3f} | {r['cosine_wiki']:.4f} | "
                     f"{r['cosine_bbc']:.4f} | {probe} | {r['prune_s']} |")
    if record.get("timing"):
        lines += ["", "Time (the machine otherwise idle; medians of interleaved runs, "
                  f"`{record['timing_command']}`):", "", "| pattern | run | median s | runs |",
                  "|---|---|---|---|"]
        for pattern, rows in record["timing"].items():
            lines += [f"| {pattern} | {k} | {r['median_s']} | {r['runs']} |"
                      for k, r in rows.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
