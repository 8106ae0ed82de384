"""What each command does: parse the flags into a :class:`prunekit.plan.Plan` once, run it
through :mod:`prunekit.api`, print the tables and save."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm.auto import tqdm

from .. import api
from ..analysis.classifiers import classifier_plan, is_small_model, prune_small
from ..analysis.grid import load_grid
from ..analysis.study import Budget, kernel_study, masks_for, parse_mask, small_network
from ..distributed import from_environment, launched, process_device
from ..errors import UsageError
from ..formats.checkpoint import inspect_checkpoint, is_checkpoint
from ..formats.load import load_model
from ..methods import get_method, load_builtin_methods
from ..models.digits import load_digits_split
from ..output import REPORT_FILE, check_output, save_module, write_folder, write_pruned
from ..plan import check_format, default_prune_method, make_plan, model_dtype
from ..quant import QuantSpec, parse_group
from ..report import (evaluation_lines, inspect_table, layer_table, ntk_plots, ntk_table,
                      pareto_table, size, summary_table)
from ..run import compare
from ..streaming import return_freed_memory
from .parser import PRUNE_KINDS, QUANTIZE_KINDS, pattern_of, quant_spec, settings_of

DISTRIBUTED_COMMANDS = ("prune", "quantize")  # the others run in one process
DEMO_RUNS = [(m, p) for p in ("0.5", "2:4") for m in ("magnitude", "wanda", "sparsegpt")]


def _progress(desc: str, group=None):
    """A progress bar over blocks (rank 0 only under torchrun; a resumed run starts part way)."""
    if group is not None and not group.is_main:
        return None
    bar = None

    def update(i: int, n: int, results) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n, initial=i, desc=desc, unit="block", leave=False, file=sys.stderr)
        bar.update(1)
        if i + 1 == n:
            bar.close()

    return update


def cmd_prune_small(args: argparse.Namespace, settings: dict, spec: QuantSpec | None) -> int:
    """prune on the built-in digits-mlp: whole-network or layer-wise methods, test accuracy."""
    given = [flag for flag, bad in (
        ("--calib", args.calib != "stdlib"), ("--eval-data", args.eval_data),
        ("--eval-task", args.eval_task),
        ("--skip", args.skip), ("--device", args.device != "cpu"),
        ("--dtype", args.dtype != "float32"), ("--seqlen", args.seqlen is not None),
        ("--batch-size", args.batch_size is not None), ("--format hf", args.fmt == "hf"),
        ("--stream", args.stream), ("torchrun", launched())) if bad]
    if given:
        raise UsageError(f"{given[0]} does not apply to {args.model}: it is calibrated on "
                         "(--samples of) the digits training split and tested on its test split, "
                         "in float64 on the CPU")
    whole = get_method(args.method).kind == "network"
    if spec is not None and whole:
        raise UsageError(f"--bits does not apply to --method {args.method}: quantize with a "
                         "layer-wise method (sparsegpt, obs, magnitude, wanda)")
    plan = classifier_plan(args.method, pattern_of(args),
                           settings if whole else {**settings, "quant": spec}, base=args.base)
    out = check_output(args.out, args.overwrite) if args.out else None
    print(f"training {args.model} on sklearn digits (seed {args.seed}) ...", file=sys.stderr)
    model, report = prune_small(args.model, plan, samples=args.samples, seed=args.seed,
                                evaluate=not args.no_eval)
    return _print_and_save(args, report, out, lambda path: save_module(
        model, report, path, args.overwrite, builder=args.model))


def _print_and_save(args: argparse.Namespace, report, out, save) -> int:
    if not args.quiet:
        print(layer_table(report))
    print(f"{report.label}: {report.target_sparsity:.1%} of {report.target_params:,} "
          f"target weights pruned ({report.model_sparsity:.1%} of all parameters) in "
          f"{report.seconds['prune']:.1f} s")
    if report.quantized:
        print(f"kept weights quantized: {report.bits_per_weight:.3f} bits per weight with "
              "scales, zeros included (fp16: 16)")
    for line in evaluation_lines(report):
        print(line)
    _save(out, save, "pruned")
    return 0


def _save(out, save, what: str) -> None:
    if out is None:
        print(f"not saved: pass --out DIR to keep the {what} model")
        return
    path = save(out)
    print(f"saved to {path} (report: {path / REPORT_FILE})")
    _print_size(path)


def _defaults(args: argparse.Namespace) -> None:
    """The calibration defaults of a transformer (digits-mlp has its own)."""
    args.samples = 128 if args.samples is None else args.samples
    args.seqlen = 512 if args.seqlen is None else args.seqlen
    args.batch_size = 8 if args.batch_size is None else args.batch_size


def _run_kwargs(args: argparse.Namespace, group) -> dict:
    """The calibration, device and evaluation keywords of prune and quantize."""
    device = str(process_device(args.device)) if launched() else args.device  # cuda:LOCAL_RANK
    return dict(calib=args.calib, samples=args.samples, seqlen=args.seqlen,
                batch_size=args.batch_size, seed=args.seed, device=device, skip=args.skip,
                calib_protocol=args.calib_protocol,
                dtype=args.dtype, group=group)


def cmd_prune(args: argparse.Namespace) -> int:
    spec = quant_spec(args)
    args.method = args.method or default_prune_method({"quant": spec})
    settings = settings_of(args, PRUNE_KINDS)
    if is_small_model(args.model):
        return cmd_prune_small(args, settings, spec)
    plan = make_plan(args.method, pattern_of(args), {**settings, "quant": spec}, kind="prune",
                     base=args.base)
    check_format(args.fmt, plan.quantizes)
    _defaults(args)
    return _run(args, plan, f"{args.method} {plan.pattern}", api.prune, "pruned")


def cmd_quantize(args: argparse.Namespace) -> int:
    settings = settings_of(args, QUANTIZE_KINDS)
    spec = QuantSpec(args.bits, parse_group(args.group), not args.asym, args.clip)
    plan = make_plan(args.method, None, {**settings, "quant": spec}, kind="quantize")
    check_format(args.fmt, plan.quantizes)
    return _run(args, plan, f"{args.method} {spec}", api.quantize, "quantized")


def _run(args: argparse.Namespace, plan, desc: str, compress, what: str) -> int:
    """prune/quantize in memory (under torchrun: one rank each), or --stream."""
    if args.stream:
        return _run_stream(args, plan, desc)
    if args.restart:
        raise UsageError("--restart applies with --stream")
    out = check_output(args.out, args.overwrite) if args.out else None
    with from_environment(args.device) as group:
        loaded, report = compress(args.model, plan, evaluate=not args.no_eval,
                                  eval_data=args.eval_data, eval_task=args.eval_task,
                                  progress=_progress(desc, group),
                                  **_run_kwargs(args, group))
    if group is not None and not group.is_main:
        return 0
    save = lambda path: write_pruned(loaded, report, path, args.overwrite, args.fmt,  # noqa: E731
                                     args.tensor_format)
    if what == "pruned":
        return _print_and_save(args, report, out, save)
    if not args.quiet:
        print(layer_table(report))
    print(f"{report.label}: {len(report.layers)} layers, {report.target_params:,} weights at "
          f"{report.bits_per_weight:.3f} bits each with scales (fp16: 16), "
          f"{report.target_sparsity:.1%} zeros kept, in {report.seconds['prune']:.1f} s")
    for line in evaluation_lines(report):
        print(line)
    _save(out, save, what)
    return 0


def _run_stream(args: argparse.Namespace, plan, desc: str) -> int:
    """prune/quantize --stream: block by block from the checkpoint to --out."""
    if not args.out:
        raise UsageError("--stream writes each block as it is done: pass --out DIR")
    if args.eval_data or args.eval_task or getattr(args, "base", None):  # quantize: no --base
        flag = "--eval-data" if args.eval_data else "--eval-task" if args.eval_task else "--base"
        raise UsageError(f"{flag} does not apply with "
                         "--stream: the streamed model is never whole in memory")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # the user's own setting wins
        return_freed_memory()
    with from_environment(args.device) as group:
        main = group is None or group.is_main
        path, report = api.prune_stream(
            args.model, args.out, plan, fmt=args.fmt, tensor_format=args.tensor_format,
            overwrite=args.overwrite, restart=args.restart, progress=_progress(desc, group),
            announce=_announce if main else None, **_run_kwargs(args, group))
    if not main:
        return 0
    if not args.quiet:
        print(layer_table(report))
    resumed = report.config["stream"]["resumed_after_block"]
    if resumed:
        print(f"resumed an interrupted run after its block {resumed}")
    what = (f"{len(report.layers)} layers, {report.target_params:,} weights quantized"
            if plan.pattern is None else f"{report.target_sparsity:.1%} of "
            f"{report.target_params:,} target weights pruned")
    print(f"{report.label}: {what} in {report.seconds['prune']:.1f} s, streamed block by block "
          f"(peak resident memory {size(report.config['stream']['peak_rss_bytes'] or 0)} "
          "with the Python runtime)")
    bits = [r.extra["bits_per_weight"] for r in report.layers if "bits_per_weight" in r.extra]
    if bits:
        print(f"kept weights quantized: {sum(bits) / len(bits):.3f} bits per weight (mean over "
              "layers) with scales")
    print(f"saved to {path} (report: {path / REPORT_FILE})")
    _print_size(path)
    return 0


def _announce(estimate) -> None:
    print(f"streaming a {size(estimate.checkpoint)} checkpoint; estimated peak "
          f"{size(estimate.total)} plus the Python runtime: block weights "
          f"{size(estimate.weights)}, Hessians {size(estimate.statistics)}, solver "
          f"{size(estimate.solver)}, one batch of activations {size(estimate.activations)}, "
          f"embeddings during the capture {size(estimate.capture)}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print("prunekit demo: all-MiniLM-L6-v2 (packaged), calibrated on the built-in stdlib corpus")
    reports = compare(
        load_model("minilm", model_dtype(args.dtype)), DEMO_RUNS, calib=args.calib,
        samples=args.samples, seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed,
        device=args.device, progress=lambda method, pattern: _progress(f"{method} {pattern}"),
        calib_protocol=args.calib_protocol)
    print(f"calibration: {args.samples} x {args.seqlen} tokens from {args.calib!r}; "
          f"fidelity on {reports[0].evaluation['n_texts']} held-out passages "
          "(mean cosine of dense vs pruned embeddings; nearest-neighbour agreement)")
    print(summary_table(reports))
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


KIND_TITLES = {
    "prune": "layer-wise pruning (any model; calibration inputs of each layer; the default is "
             "admm, or sparsegpt with --bits):",
    "quantize": "quantization (prunekit quantize; pruned models keep their zeros):",
    "network": "whole-network (digits-mlp, or any small nn.Module from Python; needs labels):",
}


def cmd_methods(_args: argparse.Namespace) -> int:
    methods = sorted(load_builtin_methods().items())
    for kind, title in KIND_TITLES.items():
        print(title)
        for name, cls in methods:
            if cls.kind == kind:
                print(f"  {name:12s} {cls.description}")
    return 0


def _print_size(path) -> None:
    if is_checkpoint(path):
        print(inspect_table(inspect_checkpoint(path), tensors=False))


def cmd_ntk(args: argparse.Namespace) -> int:
    if args.model.split(":", 1)[0] not in ("digits-mlp", "digits-cnn"):
        raise UsageError(f"prunekit ntk runs on digits-mlp[:HIDDEN] or digits-cnn[:CHANNELS], "
                         f"not {args.model!r}; from Python, prunekit.analysis.ntk takes any "
                         "nn.Module")
    requests = [parse_mask(m) for m in args.masks]
    if args.out:
        try:
            import matplotlib  # noqa: F401  (optional: prunekit[analysis])
        except ImportError:
            raise UsageError("prunekit ntk --out draws its plots with matplotlib: pip install "
                             "'prunekit[analysis]' (or drop --out for the table only)") from None
    init = small_network(args.model, args.seed)
    out = check_output(args.out, args.overwrite) if args.out else None
    data = load_digits_split(seed=0)
    budget = Budget(epochs=args.epochs, seed=args.seed)
    masks = masks_for(init, data, requests, budget, top=args.top,
                      progress=lambda s: print(f"computing {s} ...", file=sys.stderr))
    rows = kernel_study(init, data, [(r.label, m) for r, m in masks], samples=args.samples,
                        top=args.top, budget=budget if args.train else None)
    table = ntk_table(rows, args.top)
    print(f"{args.model} at initialisation (seed {args.seed}); traced NTK on {args.samples} "
          f"training images; NTK regression on the {len(data.y_test)} test images")
    print(table)
    if out is not None:
        def write(tmp):
            (tmp / "ntk_report.json").write_text(json.dumps(
                {"model": args.model, "seed": args.seed, "samples": args.samples,
                 "top": args.top, "rows": rows}, indent=1) + "\n")
            (tmp / "ntk_report.md").write_text(
                f"# NTK of {args.model} under pruning masks\n\n```\n{table}\n```\n\n"
                "![spectra](ntk_spectra.png)\n\n![overlap](ntk_overlap.png)\n")
            ntk_plots(rows, tmp, args.top)

        write_folder(out, args.overwrite, write)
        print(f"saved to {out} (ntk_report.md, ntk_report.json, ntk_spectra.png, ntk_overlap.png)")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    if args.device != "cpu" or args.dtype != "float32":
        raise UsageError("prunekit pareto runs on the CPU in float32 (the grid sets the dtypes)")
    grid = load_grid(args.grid)  # a bad grid fails here, before the model loads
    bar = tqdm(total=len(grid), desc="pareto", unit="point", file=sys.stderr)

    def progress(name: str, i: int, n: int) -> None:
        bar.n = i
        bar.set_description(f"pareto: {name}")
        bar.refresh()

    result = api.pareto(args.model, args.out, args.grid, calib=args.calib, samples=args.samples,
                        seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed,
                        progress=progress, labels=args.labels,
                        calib_protocol=args.calib_protocol)
    bar.n = len(grid)
    bar.close()
    print(pareto_table(result))
    print(f"frontier: {', '.join(p['name'] for p in result['points'] if p['frontier'])}")
    print(f"report: {args.out}/pareto.md (pareto.json, pareto.png)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_checkpoint(args.path)
    print(json.dumps(info, indent=1) if args.json else inspect_table(info, not args.totals))
    return 0


COMMANDS = {"prune": cmd_prune, "quantize": cmd_quantize, "inspect": cmd_inspect,
            "ntk": cmd_ntk, "pareto": cmd_pareto, "demo": cmd_demo, "methods": cmd_methods}
