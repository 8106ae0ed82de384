"""One-shot pruning of a real language model: SmolLM2-135M-Instruct (the built-in ``smollm2``)
pruned by magnitude, Wanda and SparseGPT at 50 / 60 / 70 %, 2:4 and 4:8, ADMM (``admm``) at 50 %
and 2:4, and SparseGPT 50 % and 2:4 with int4 (groups of 64; joint), judged by perplexity on two
held-out sources; beside each row, the same recipe run by llm-compressor on the very same
calibration windows (where it has one).

    python experiments/smollm2_oneshot.py [--rows ROW,ROW|all] [--samples 128] [--seqlen 512]
        [--eval-windows 32] [--llmcompressor VENV] [--device cpu|cuda] [--inputs FILE]
        [--name smollm2_oneshot] [--work DIR] [--out docs/experiments]

Protocol: ``--samples`` windows of ``--seqlen`` tokens drawn (seed 0) from the calibration
split of ``wiki`` (Wikipedia lead summaries) calibrate every run, in float32 on ``--device``.
Perplexity is measured on the first ``--eval-windows`` disjoint windows of ``--seqlen`` tokens
(stride = seqlen) of two held-out streams: the ``wiki`` evaluation split (articles never used
for calibration) and the stdlib corpus's evaluation split (another kind of English: the Python
documentation). Each row starts from the same dense model; magnitude ranks per layer (as in the
SparseGPT paper and llm-compressor), Wanda per output row, SparseGPT per block of columns. With
``--llmcompressor VENV`` the same recipe is run by llm-compressor's ``oneshot`` on the same
token windows (``benchmarks/llmcompressor_oneshot.py``, which creates that virtual environment
the first time); its pruned weights are loaded into the dense model and measured by the same
perplexity code. Rows already in the JSON are kept (resume), so the
table can be filled over several runs; ``--rows`` picks rows. SmolLM2's linear weights were
shipped 4-bit (Q4_1), so int4 rows on it are optimistic.

Every run writes the token windows it used (calibration and both evaluation streams) to
``WORK/inputs.safetensors``; ``--inputs`` reads them from such a file instead of tokenising, so
that a run on another machine (another Python, whose stdlib corpus differs) measures exactly
the same tokens. llm-compressor runs on the GPU by itself when one is visible.

Writes docs/experiments/NAME.{md,json} (NAME: ``--name``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prunekit.data import eval_windows, load_texts
from prunekit.data.calibration import calibration
from prunekit.eval.perplexity import perplexity
from prunekit.eval.protocol import on_device
from prunekit.formats.load import load_model
from prunekit.models.adapter import max_positions
from prunekit.models.loaders import resolve_model
from prunekit.patterns import NM, Unstructured
from prunekit.plan import make_plan
from prunekit.quant import QuantSpec
from prunekit.run import calibration_info, copy_model, run_one

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("wiki", "stdlib")  # the held-out streams, in the table's order
#: Rows llm-compressor has no recipe for (compare with its SparseGPT row of the same pattern)
UNAVAILABLE = {"magnitude": "no one-shot magnitude pruning in llm-compressor "
                            "(benchmarks/llmcompressor_oneshot.py)",
               "admm": "no ADMM refinement in llm-compressor: compare with its SparseGPT row"}


def rows() -> dict[str, tuple[str | None, object, dict]]:
    """{row: (method, pattern, settings)}, in the table's order."""
    out: dict[str, tuple[str | None, object, dict]] = {"dense": (None, None, {})}
    for p in ("0.5", "0.6", "0.7", "2:4", "4:8"):
        for m in ("magnitude", "wanda", "sparsegpt"):
            # magnitude per layer, as in the SparseGPT paper and llm-compressor
            pattern = (NM(*map(int, p.split(":"))) if ":" in p
                       else Unstructured(float(p), "layer") if m == "magnitude" else float(p))
            out[f"{m}-{p}"] = (m, pattern, {})
    # groups of 64: SmolLM2's 576 input columns are not a multiple of 128, which llm-compressor
    # refuses ("columns % group_size == 0")
    for p in ("0.5", "2:4"):  # SparseGPT refined by ADMM: prunekit only
        out[f"admm-{p}"] = ("admm", NM(2, 4) if p == "2:4" else float(p), {})
    out["sparsegpt-0.5+int4"] = ("sparsegpt", 0.5, {"quant": QuantSpec(4, 64)})
    out["sparsegpt-2:4+int4"] = ("sparsegpt", NM(2, 4), {"quant": QuantSpec(4, 64)})
    return out


def ppl(model, windows: dict[str, list], device: str) -> dict[str, float]:
    with on_device(model, device):
        return {name: round(perplexity(model, w, device)[0], 4) for name, w in windows.items()}


def save_inputs(path: Path, batches: list[dict], windows: dict[str, list]) -> None:
    """The calibration ids (samples, seqlen) and each evaluation window's ids and labels."""
    tensors = {"calib.input_ids": torch.cat([b["input_ids"] for b in batches]).contiguous()}
    for src, ws in windows.items():
        for i, w in enumerate(ws):
            tensors[f"eval.{src}.{i:04d}.input_ids"] = w["input_ids"].contiguous()
            tensors[f"eval.{src}.{i:04d}.labels"] = w["labels"].contiguous()
    save_file(tensors, str(path))


def load_inputs(path: Path, batch_size: int) -> tuple[list[dict], dict[str, list]]:
    """What :func:`save_inputs` wrote: calibration batches and evaluation windows."""
    t = load_file(str(path))
    ids = t.pop("calib.input_ids")
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)}
               for x in ids.split(batch_size)]
    windows: dict[str, list] = {}
    for key in sorted(k for k in t if k.endswith(".input_ids")):
        _, src, i, _ = key.split(".")
        x = t[key]
        windows.setdefault(src, []).append(
            {"input_ids": x, "attention_mask": torch.ones_like(x),
             "labels": t[f"eval.{src}.{i}.labels"]})
    return batches, {src: windows[src] for src in SOURCES}


def machine(device: str) -> str:
    where = (f"CUDA ({torch.cuda.get_device_name(device)})" if device.startswith("cuda")
             else "CPU")
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}, {where}, float32")


def run_llmcompressor(venv: str, folder: str, calib: Path, row: str, spec,
                      work: Path) -> dict | None:
    """llm-compressor's weights and figures for ``row``; None (its error printed) if it failed,
    so that one failure does not lose the other rows."""
    method, pattern, settings = spec
    out = work / f"llmc-{row.replace(':', '_').replace('+', '_')}.safetensors"
    text = str(pattern) if isinstance(pattern, NM) else str(getattr(pattern, "sparsity", pattern))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "llmcompressor_oneshot.py"), "--venv", venv,
           "--model", folder, "--calib", str(calib), "--method", method, "--pattern", text,
           "--out", str(out)]
    if settings.get("quant") is not None:
        cmd += ["--bits", "4", "--group", str(settings["quant"].group)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"llm-compressor failed on {row}:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return {"weights": out, **json.loads(proc.stdout.strip().splitlines()[-1])}


def table(record: dict, name: str) -> str:
    head = ("| row | method | pattern | int4 | ppl wiki | ppl stdlib | prune s | llm-compressor "
            "ppl wiki | llm-compressor ppl stdlib | llm-compressor s |\n" + "|---" * 10 + "|\n")
    lines = []
    for row in rows():
        r = record["rows"].get(row)
        if r is None:
            continue
        lc = r.get("llmcompressor") or {}
        na = "n/a" if "unavailable" in lc else None

        def f(x, fmt="{:.2f}", missing="–"):
            return missing if x is None else fmt.format(x)

        lines.append(f"| {row} | {r['method'] or 'dense'} | {r['pattern'] or '–'} | "
                     f"{'yes' if r['int4'] else ''} | {f(r['ppl']['wiki'])} | "
                     f"{f(r['ppl']['stdlib'])} | {f(r['seconds'], '{:.0f}')} | "
                     f"{f(lc.get('ppl', {}).get('wiki'), missing=na or '–')} | "
                     f"{f(lc.get('ppl', {}).get('stdlib'), missing=na or '–')} | "
                     f"{f(lc.get('seconds'), '{:.0f}', missing=na or '–')} |")
    notes = [f"- {row}: {r['note']}" for row, r in record["rows"].items() if r.get("note")]
    for row, r in record["rows"].items():
        lc = r.get("llmcompressor") or {}
        if "sparsity" in lc and abs(lc["sparsity"] - r["sparsity"]) > 0.005:
            notes.append(f"- {row}: llm-compressor's weights hold {lc['sparsity']:.1%} zeros "
                         f"against prunekit's {r['sparsity']:.1%}: its GPTQModifier, run after "
                         "the pruning, does not keep the mask (the pattern is lost)")
    ones = [row for row, r in record["rows"].items()
            if (r.get("llmcompressor") or {}).get("batch_size") == 1]
    if ones:
        notes.append(f"- {', '.join(ones)}: llm-compressor was fed one window per forward pass "
                     "(the other rows: 8, as prunekit)")
    p = record["protocol"]
    return (f"# SmolLM2-135M-Instruct, one-shot pruning\n\nGenerated by "
            f"`experiments/smollm2_oneshot.py` from [{name}.json]({name}.json)."
            f" Calibration: {p['calibration']}. Perplexity: {p['perplexity']}. {p['machine']}. "
            "SmolLM2's linear weights were shipped 4-bit (Q4_1): int4 rows are optimistic. "
            "Rows run one at a time; `–`: not measured yet; `n/a`: llm-compressor has no "
            "such recipe: no one-shot magnitude pruning (its MagnitudePruningModifier is a "
            "training schedule and leaves the weights dense under `oneshot`), no ADMM "
            "(compare with its SparseGPT row of the same pattern).\n\n" + head + "\n".join(lines) + "\n"
            + ("\nNotes:\n" + "\n".join(notes) + "\n" if notes else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="all", help="comma-separated row names, or 'all'")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--llmcompressor", metavar="VENV",
                    help="also run llm-compressor, in this virtual environment (created by "
                         "benchmarks/llmcompressor_oneshot.py if missing)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--inputs", type=Path,
                    help="token windows written by an earlier run (WORK/inputs.safetensors)")
    ap.add_argument("--name", default="smollm2_oneshot", help="file name of the record")
    ap.add_argument("--work", default="/tmp/prunekit-smollm2", help="scratch folder")
    ap.add_argument("--out", default=str(ROOT / "docs" / "experiments"))
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.name}.json"
    record = json.loads(json_path.read_text()) if json_path.exists() else {"rows": {}}
    wanted = list(rows()) if args.rows == "all" else args.rows.split(",")
    unknown = sorted(set(wanted) - set(rows()))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose from {', '.join(rows())}")

    folder, _ = resolve_model("smollm2")
    dense = load_model("smollm2")
    if args.inputs is not None:
        batches, windows = load_inputs(args.inputs, batch_size=8)
        args.samples, args.seqlen = sum(len(b["input_ids"]) for b in batches), \
            batches[0]["input_ids"].shape[1]
        args.eval_windows = len(windows["wiki"])
    else:
        tok = dense.tokenizer
        batches = calibration(tok, "wiki", args.samples, args.seqlen, batch_size=8, seed=0,
                              max_positions=max_positions(dense.model))
        windows = {src: eval_windows(tok, load_texts(src, "eval"), args.seqlen, args.seqlen,
                                     max_windows=args.eval_windows) for src in SOURCES}
    save_inputs(work / "inputs.safetensors", batches, windows)
    calib_file = work / "calib.safetensors"
    save_file({"input_ids": torch.cat([b["input_ids"] for b in batches]).contiguous()},
              str(calib_file))
    scored = {src: int(sum(int((w["labels"][:, 1:] != -100).sum()) for w in ws))
              for src, ws in windows.items()}
    protocol = {
        "calibration": f"{args.samples} x {args.seqlen} tokens of wiki (calibration split, "
                       "seed 0)",
        "perplexity": "; ".join(f"{src} evaluation split, first {len(ws)} disjoint windows of "
                                f"{args.seqlen} tokens (stride {args.seqlen}), {scored[src]} "
                                "tokens scored" for src, ws in windows.items()),
        "machine": machine(args.device),
        "command": " ".join(["python", "experiments/smollm2_oneshot.py", *sys.argv[1:]]),
    }
    if record.get("protocol", {}).get("calibration") not in (None, protocol["calibration"]) or \
            record.get("protocol", {}).get("perplexity") not in (None, protocol["perplexity"]):
        raise SystemExit(f"{json_path} holds rows of another protocol ({record['protocol']}): "
                         "rerun with the same --samples/--seqlen/--eval-windows, or another --out")
    record["protocol"] = protocol
    info = calibration_info("wiki", args.samples, args.seqlen, 0)
    for row in wanted:
        method, pattern, settings = rows()[row]
        r = record["rows"].get(row)
        if r is None:
            if method is None:
                r = {"method": None, "pattern": None, "int4": False, "seconds": None,
                     "ppl": ppl(dense.model, windows, args.device)}
            else:
                plan = make_plan(method, pattern, settings, kind="prune")
                loaded = copy_model(dense)
                report = run_one(loaded, plan, batches, device=args.device,
                                 calibration_info=info)
                r = {"method": method, "pattern": str(plan.pattern),
                     "int4": settings.get("quant") is not None,
                     "seconds": round(report.seconds["prune"], 1),
                     "sparsity": round(report.target_sparsity, 4),
                     "ppl": ppl(loaded.model, windows, args.device)}
                del loaded
            record["rows"][row] = r
        if args.llmcompressor and method in UNAVAILABLE and "llmcompressor" not in r:
            r["llmcompressor"] = {"unavailable": UNAVAILABLE[method]}
        if args.llmcompressor and method is not None and "llmcompressor" not in r:
            lc = run_llmcompressor(args.llmcompressor, folder, calib_file, row,
                                   (method, pattern, settings), work)
            if lc is not None:
                loaded = copy_model(dense)
                weights = load_file(str(lc.pop("weights")))
                modules = dict(loaded.model.named_modules())
                with torch.no_grad():
                    for name, w in weights.items():
                        modules[name].weight.copy_(w)
                r["llmcompressor"] = {**lc, "ppl": ppl(loaded.model, windows, args.device)}
                del loaded
        json_path.write_text(json.dumps(record, indent=1) + "\n")
        (out / f"{args.name}.md").write_text(table(record, args.name))
        print(f"{row}: {r}", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {time.time() - t0:.0f} s")
