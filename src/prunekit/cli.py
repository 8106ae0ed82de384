"""The command line: a thin layer over api.py. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence

from . import api
from .errors import PrunekitError, UsageError
from .methods import get_method, load_builtin_methods
from .network import CURVATURES, NETWORK_METHODS, NetworkConfig
from .patterns import NM, parse_pattern
from .report import (evaluation_lines, inspect_table, layer_table, ntk_plots, ntk_table,
                     size, summary_table)

DISTRIBUTED_COMMANDS = ("prune", "quantize")  # the others run in one process
DEMO_RUNS = [(m, p) for p in ("0.5", "2:4") for m in ("magnitude", "wanda", "sparsegpt")]


#: Exit codes: 2 for bad input (argparse's convention, and every PrunekitError), 1 for an
#: unexpected failure, 130 for Ctrl-C.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) that points at --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: pass e.g. 128") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer: pass e.g. 128")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: pass e.g. 0.01") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0: pass e.g. 0.01")
    return value


def _add_calibration(p: argparse.ArgumentParser, samples: int, seqlen: int,
                     small: bool = False) -> None:
    p.add_argument("--calib", default="stdlib",
                   help="calibration text: 'stdlib' (built-in), a text file, or a Hugging Face "
                        "dataset NAME[:CONFIG][@SPLIT] or local dataset path (default: stdlib)")
    p.add_argument("--samples", type=_positive, default=None if small else samples,
                   help=f"calibration sequences (default: {samples}; digits-mlp: every "
                        "training image)" if small else f"calibration sequences (default: {samples})")
    p.add_argument("--seqlen", type=_positive, default=None if small else seqlen,
                   help=f"tokens per calibration sequence (default: {seqlen})")
    p.add_argument("--batch-size", type=_positive, default=None if small else 8,
                   help="sequences per forward pass (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--device", default="cpu", help="compute device: cpu or cuda[:N] (default: cpu)")
    p.add_argument("--dtype", choices=tuple(api.MODEL_DTYPES), default="float32",
                   help="precision the model is loaded and run in during calibration (default "
                        "float32); Hessians and solves are always float32 or float64")


def build_parser() -> argparse.ArgumentParser:
    methods = sorted(n for n, c in load_builtin_methods().items() if c.kind == "prune")
    parser = _Parser(
        prog="prunekit", description="Prune PyTorch / Hugging Face models and measure the cost.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what the library does; tracebacks on errors")
    common = _Parser(add_help=False)  # so that -v also works after the command
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what the library does; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", parents=[common],
                       help="one-shot prune a model with calibration data")
    p.add_argument("model", help="Hugging Face id, local model folder, 'minilm' (built-in), or "
                                 "'digits-mlp[:HIDDEN]' (a small MLP trained on sklearn's "
                                 "digits in seconds, for the whole-network methods)")
    p.add_argument("--method", default="sparsegpt",
                   help=f"one of: {', '.join(methods)}; on digits-mlp also "
                        f"{', '.join(NETWORK_METHODS)} (see 'prunekit methods')")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sparsity", help="unstructured sparsity in [0, 1), e.g. 0.5 or 50%%")
    which.add_argument("--pattern", help="N:M pattern such as 2:4 (or a sparsity)")
    p.add_argument("--scope", choices=("row", "layer", "global"), default=None,
                   help="where unstructured weights compete: per output row, per layer, or "
                        "across all layers (magnitude and movement only); default: the "
                        "method's own (row for magnitude and wanda, layer for movement as in "
                        "its paper, and for sparsegpt, whose mask is chosen per block of "
                        "columns across all rows as in its paper)")
    _add_calibration(p, samples=128, seqlen=512, small=True)
    _add_output_and_solver(p, "dense", "sparsegpt, obs and obs-network", "sparsegpt")
    p.add_argument("--curvature", choices=tuple(CURVATURES),
                   help="obd/obs-network: curvature of the task loss: empirical 'fisher' "
                        "(default), 'gauss-newton', or the 'exact' Hessian")
    p.add_argument("--obs-k", type=_positive, dest="k",
                   help="obs-network: weights removed jointly per step (default 1, the classic "
                        "one-at-a-time OBS)")
    p.add_argument("--max-params", type=_positive, dest="max_params",
                   help="obd/obs-network: largest network given a dense n x n curvature "
                        "(default 20000: 3 GiB in float64)")
    p.add_argument("--ntk-top", type=_positive, dest="top",
                   help="ntk: eigenvectors of the dense kernel to preserve (default 10)")
    p.add_argument("--ntk-rounds", type=_positive, dest="rounds",
                   help="ntk: geometric pruning rounds, scores recomputed each (default 1)")
    p.add_argument("--base", metavar="PRETRAINED",
                   help="movement: the pretrained checkpoint MODEL was fine-tuned from (Hugging "
                        "Face id, local folder or 'minilm'; same architecture, layers matched "
                        "by name); required by --method movement, an error with any other")
    p.add_argument("--movement-score", choices=("movement", "first-order"), dest="score",
                   help="movement: 'movement' ranks |w - w_base| (default), 'first-order' "
                        "w*(w - w_base), positive where a weight moved away from zero")
    p.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    p.add_argument("--eval-data", metavar="SOURCE",
                   help="held-out text for the evaluation, like --calib (default: the held-out "
                        "part of --calib; needed when --calib names a split, NAME@SPLIT)")
    p.add_argument("--quiet", action="store_true", help="no per-layer table")

    _add_quant(p, prune=True)

    q = sub.add_parser("quantize", parents=[common],
                       help="quantize a model's linear layers (RTN, GPTQ, AWQ); keeps the "
                            "zeros of a pruned model exactly")
    q.add_argument("model", help="Hugging Face id, local model folder (pruned or not), or "
                                 "'minilm' (built-in)")
    q.add_argument("--method", default="gptq", choices=QUANTIZERS,
                   help="rtn: round to nearest; gptq: OBS error compensation (default); awq: "
                        "activation-aware input scaling, then --awq-solver")
    _add_quant(q, prune=False)
    _add_calibration(q, samples=128, seqlen=512)
    _add_output_and_solver(q, "unquantized", "gptq and awq", "gptq")
    q.add_argument("--act-order", action="store_const", const=True, dest="act_order",
                   help="gptq: quantize columns by decreasing activation energy (with static "
                        "groups, so every scale still covers consecutive columns)")
    q.add_argument("--static-groups", action="store_const", const=True, dest="static_groups",
                   help="gptq: fit every group's grid before the sweep")
    q.add_argument("--awq-grid", type=_positive, dest="grid",
                   help="awq: exponents searched in [0, 1) (default 20)")
    q.add_argument("--awq-solver", choices=("rtn", "gptq"), dest="solver",
                   help="awq: how the scaled weights are quantized (default rtn, the paper's)")
    q.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    q.add_argument("--eval-data", metavar="SOURCE",
                   help="held-out text for the evaluation, like --calib")
    q.add_argument("--quiet", action="store_true", help="no per-layer table")

    for sp in (p, q):
        sp.add_argument("--format", choices=api.SAVE_FORMATS, default="prunekit", dest="fmt",
                        help="--out as a prunekit checkpoint (default: every tensor in its "
                             "smallest exact format, integer codes for quantized layers; "
                             "prunekit.load reads it), 'hf' (a dense save_pretrained folder) or "
                             "'compressed-tensors' (quantized models, pack-quantized: "
                             "transformers and vLLM load it)")
        sp.add_argument("--tensor-format", default="auto", dest="tensor_format",
                        choices=("auto", "dense", "bitmask", "nm", "quant", "quant-bitmask",
                                 "quant-nm"),
                        help="prunekit checkpoint: store every compressed layer in this format "
                             "instead of the smallest exact one (docs/formats.md)")

    i = sub.add_parser("inspect", parents=[common],
                       help="what a prunekit checkpoint stores: formats, sparsity, bytes")
    i.add_argument("path", help="a folder written by prunekit prune/quantize --out")
    i.add_argument("--totals", action="store_true", help="only the totals line")
    i.add_argument("--json", action="store_true", help="print the figures as JSON")

    n = sub.add_parser("ntk", parents=[common],
                       help="empirical NTK of a small network under pruning masks: spectra, "
                            "effective rank, alignment, eigenspace overlap, NTK regression")
    n.add_argument("model", help="digits-mlp[:HIDDEN] or digits-cnn[:CHANNELS], at its seeded "
                                 "initialisation (needs scikit-learn)")
    n.add_argument("--masks", nargs="+", required=True, metavar="SPEC",
                   help="METHOD:SPARSITY with METHOD random, magnitude, snip, ntk (chosen at "
                        "initialisation), lottery (IMP with rewinding), obs or obd (of the "
                        "trained network); or a prunekit checkpoint folder of the same network")
    n.add_argument("--samples", type=_positive, default=300,
                   help="training images the kernel is computed on (default 300)")
    n.add_argument("--top", type=_positive, default=10,
                   help="eigenvectors compared by the subspace overlap (default 10)")
    n.add_argument("--epochs", type=_positive, default=20,
                   help="training budget of lottery/obs/obd masks (default 20)")
    n.add_argument("--train", action="store_true",
                   help="also train every masked network for --epochs and report its accuracy")
    n.add_argument("--seed", type=int, default=0, help="initialisation and data order seed")
    n.add_argument("--out", help="folder for ntk_report.{md,json} and the PNG plots")
    n.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    pa = sub.add_parser("pareto", parents=[common],
                        help="measure a grid of compression recipes (quality, real bytes, time) "
                             "and draw the accuracy-versus-size frontier")
    pa.add_argument("model", help="Hugging Face id, local model folder, 'minilm' (built-in), or "
                                  "'digits-mlp[:HIDDEN]' (a classifier: test accuracy)")
    pa.add_argument("--grid", default="default",
                    help="'default' (dense fp32/fp16/bf16, int8, int4, 50 %%, 2:4, each + int4, "
                         "70/80/90 %% + int4, magnitude/RTN baselines) or a YAML grid file "
                         "(docs/pareto.md)")
    pa.add_argument("--labels", metavar="FILE",
                    help="a labelled set (JSONL or CSV with text and label) for a Hugging Face "
                         "sequence classifier MODEL: quality is its accuracy on it")
    pa.add_argument("--out", required=True,
                    help="folder for the points' checkpoints and pareto.{md,json,png}; points "
                         "already measured there are reused (resume)")
    _add_calibration(pa, samples=64, seqlen=128)

    d = sub.add_parser("demo", parents=[common], help="prune the built-in MiniLM with every method and compare")
    _add_calibration(d, samples=64, seqlen=128)

    sub.add_parser("methods", parents=[common], help="list the registered pruning methods")
    return parser


QUANTIZERS = ("rtn", "gptq", "awq")


def _add_output_and_solver(p: argparse.ArgumentParser, skipped: str, damped: str,
                           blocked: str) -> None:
    """--out, --overwrite, --skip and the Hessian solver flags shared by prune and quantize."""
    p.add_argument("--out", help="output directory (the model as a prunekit checkpoint, see "
                                 "--format; tokenizer; prune_report.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--skip", action="append", default=[], metavar="GLOB",
                   help=f"leave layers matching this glob {skipped}, e.g. '*.mlp.down_proj' "
                        "(repeatable)")
    p.add_argument("--damp", type=_nonnegative_float, dest="rel_damp",
                   help=f"relative Hessian damping for {damped} (default 0.01)")
    p.add_argument("--blocksize", type=_positive,
                   help=f"{blocked} column block size (default 128)")
    p.add_argument("--hessian-dtype", choices=("float32", "float64"),
                   help="precision of the Hessian and solves (default float32)")
    p.add_argument("--stream", action="store_true",
                   help="read a safetensors checkpoint one block at a time and write each "
                        "block as it is done: memory stays about one block (printed first); "
                        "needs --out; a rerun resumes an interrupted one (docs/scaling.md)")
    p.add_argument("--restart", action="store_true",
                   help="with --stream: discard an interrupted run of --out instead of resuming")


def _add_quant(p: argparse.ArgumentParser, prune: bool) -> None:
    """The grid flags; on ``prune`` they are off unless --bits is given."""
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=None if prune else 4,
                   help=("also quantize the kept weights to this many bits, keeping the mask "
                         "(sparsegpt: in its own sweep; other methods: GPTQ after pruning)")
                   if prune else "bits per weight (default 4)")
    p.add_argument("--group", default="128",
                   help="input columns per scale: 32, 64, 128 (default) ... or 'channel' for one "
                        "scale per output row")
    p.add_argument("--asym", action="store_true",
                   help="asymmetric grid with a zero point (default symmetric)")
    p.add_argument("--clip", choices=("minmax", "mse"), default="minmax",
                   help="grid range: the group's min/max (default) or the error-minimising "
                        "shrink of it")
    if prune:
        p.add_argument("--quant-method", choices=("gptq", "rtn"), dest="quant_method",
                       help="with --bits, for methods other than sparsegpt (and with "
                            "--two-step): how to quantize after pruning (default gptq)")
        p.add_argument("--two-step", action="store_const", const=False, dest="joint",
                       help="sparsegpt with --bits: prune each layer, then GPTQ it keeping the "
                            "mask, instead of quantizing inside the pruning sweep")


def _quant_spec(args: argparse.Namespace):
    from .quant import QuantSpec, parse_group

    if args.bits is None:
        given = [flag for flag, on in (("--asym", args.asym), ("--clip", args.clip != "minmax"),
                                       ("--group", args.group != "128"),
                                       ("--quant-method", args.quant_method),
                                       ("--two-step", args.joint is not None)) if on]
        if given:
            raise UsageError(f"{given[0]} sets how to quantize: add --bits 4 (or 8, 3, 2)")
        return None
    return QuantSpec(args.bits, parse_group(args.group), not args.asym, args.clip)


def _progress(desc: str, group=None):
    """A progress bar over blocks (rank 0 only under torchrun; a resumed run starts part way)."""
    from tqdm.auto import tqdm

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


def _pattern(args: argparse.Namespace):
    """The pattern of --sparsity or --pattern; --sparsity takes no N:M pattern."""
    text = args.sparsity if args.sparsity is not None else args.pattern
    if args.method in NETWORK_METHODS:
        if args.scope not in (None, "global"):
            raise UsageError(f"--method {args.method} ranks all weights together: drop --scope")
        return parse_pattern(text, "global")
    pattern = parse_pattern(text, args.scope or get_method(args.method).default_scope)
    if args.sparsity is not None and isinstance(pattern, NM):
        raise UsageError(
            f"--sparsity {args.sparsity} is an N:M pattern, not a fraction: pass --pattern "
            f"{args.sparsity}, or a sparsity such as --sparsity 0.5"
        )
    return pattern


#: Method settings that have a flag: config field -> flag.
SETTING_FLAGS = {"rel_damp": "--damp", "blocksize": "--blocksize",
                 "hessian_dtype": "--hessian-dtype", "score": "--movement-score",
                 "quant_method": "--quant-method", "joint": "--two-step",
                 "act_order": "--act-order", "static_groups": "--static-groups",
                 "grid": "--awq-grid", "solver": "--awq-solver"}


#: Settings of the whole-network methods: config field -> flag.
NETWORK_FLAGS = {"rel_damp": "--damp", "curvature": "--curvature", "k": "--obs-k",
                 "max_params": "--max-params", "top": "--ntk-top", "rounds": "--ntk-rounds"}


def _network_settings(args: argparse.Namespace) -> NetworkConfig:
    """The whole-network config; layer-method flags are an error, and the reverse."""
    wrong = [flag for key, flag in SETTING_FLAGS.items()
             if key not in NETWORK_FLAGS and getattr(args, key, None) is not None]
    if args.method in NETWORK_METHODS:
        if wrong:
            raise UsageError(f"{wrong[0]} does not apply to --method {args.method}")
        for key in ("k", "rel_damp"):
            if getattr(args, key) is not None and args.method != "obs-network":
                raise UsageError(f"{NETWORK_FLAGS[key]} does not apply to --method "
                                 f"{args.method} (it is for obs-network)")
        for key in ("top", "rounds"):
            if getattr(args, key) is not None and args.method != "ntk":
                raise UsageError(f"{NETWORK_FLAGS[key]} does not apply to --method "
                                 f"{args.method} (it is for ntk)")
        given = {k: getattr(args, k) for k in NETWORK_FLAGS if getattr(args, k) is not None}
        return NetworkConfig(**given)
    for key in ("curvature", "k", "max_params", "top", "rounds"):
        if getattr(args, key) is not None:
            raise UsageError(f"{NETWORK_FLAGS[key]} applies to the whole-network methods "
                             f"({', '.join(NETWORK_METHODS)}), not to --method {args.method}")
    return NetworkConfig()


def _settings(args: argparse.Namespace) -> dict:
    """The method settings given as flags; a flag the method does not have is an error."""
    given = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    known = {f.name for f in dataclasses.fields(get_method(args.method).config_cls)}
    for key in given:
        if key not in known:
            users = sorted(name for name, cls in load_builtin_methods().items()
                           if key in {f.name for f in dataclasses.fields(cls.config_cls)})
            raise UsageError(
                f"{SETTING_FLAGS[key]} {given[key]} does not apply to --method {args.method}: "
                f"drop it, or use a method that has it ({', '.join(users) or 'none'})"
            )
    return given


def _needs_base(method: str) -> bool:
    return method not in NETWORK_METHODS and api.needs_base(method)


def _check_base(args: argparse.Namespace) -> None:
    """--base goes with the methods that score against a base checkpoint (movement), and they
    need it; checked before any work."""
    wanted = _needs_base(args.method)
    if args.base is not None and not wanted:
        raise UsageError(f"--base {args.base} does not apply to --method {args.method}: it is "
                         "for --method movement; drop --base, or use --method movement")
    if args.base is None and wanted:
        raise UsageError(f"--method {args.method} needs --base PRETRAINED: the checkpoint the "
                         "model was fine-tuned from (Hugging Face id, local folder or 'minilm')")


def cmd_prune_small(args: argparse.Namespace) -> int:
    """prune on the built-in digits-mlp: whole-network or layer-wise methods, test accuracy."""
    if _needs_base(args.method):
        raise UsageError(f"--method {args.method} prunes a fine-tuned transformer against its "
                         f"pretrained --base: {args.model} has no base checkpoint")
    _check_base(args)
    given = [flag for flag, bad in (
        ("--calib", args.calib != "stdlib"), ("--eval-data", args.eval_data),
        ("--skip", args.skip), ("--device", args.device != "cpu"),
        ("--dtype", args.dtype != "float32"), ("--seqlen", args.seqlen is not None),
        ("--batch-size", args.batch_size is not None), ("--format hf", args.fmt == "hf"),
        ("--stream", args.stream), ("torchrun", _launched())) if bad]
    if given:
        raise UsageError(f"{given[0]} does not apply to {args.model}: it is calibrated on "
                         "(--samples of) the digits training split and tested on its test split, "
                         "in float64 on the CPU")
    pattern = _pattern(args)
    network = _network_settings(args)
    spec = _quant_spec(args)
    if spec is not None and args.method in NETWORK_METHODS:
        raise UsageError(f"--bits does not apply to --method {args.method}: quantize with a "
                         "layer-wise method (sparsegpt, obs, magnitude, wanda)")
    config = (None if args.method in NETWORK_METHODS
              else api.make_config(args.method, {**_settings(args), "quant": spec}))
    if args.out:
        api.check_output(args.out, args.overwrite)
    print(f"training {args.model} on sklearn digits (seed {args.seed}) ...", file=sys.stderr)
    model, report = api.prune_small(
        args.model, args.method, pattern, samples=args.samples, seed=args.seed, config=config,
        network_config=network if args.method in NETWORK_METHODS else None,
        evaluate=not args.no_eval)
    return _print_and_save(args, report, pattern,
                           lambda out: api.save_module(model, report, out, args.overwrite,
                                                       builder=args.model))


def _print_and_save(args: argparse.Namespace, report, pattern, save) -> int:
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
    if args.out:
        path = save(args.out)
        print(f"saved to {path} (report: {path / api.REPORT_FILE})")
        _print_size(path)
    else:
        print("not saved: pass --out DIR to keep the pruned model")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if api.is_small_model(args.model):
        return cmd_prune_small(args)
    if args.method in NETWORK_METHODS:
        raise UsageError(
            f"--method {args.method} needs a task loss and a dense curvature of every weight: "
            "use it on digits-mlp, or from Python with prunekit.network.prune_network(model, "
            "...); for transformers use --method obs (layer-wise exact OBS) or sparsegpt")
    _network_settings(args)  # --curvature / --obs-k are errors here
    _check_base(args)
    api.check_kind(args.method, "prune")
    pattern = _pattern(args)
    spec = _quant_spec(args)
    settings = _settings(args)
    if spec is None and "quant_method" in settings:
        raise UsageError("--quant-method applies with --bits")
    if spec is None and args.fmt == "compressed-tensors":
        raise UsageError("--format compressed-tensors stores quantized layers: add --bits 4 "
                         "(a pruned-only model exports with --format hf)")
    config = api.make_config(args.method, {**settings, "quant": spec})
    args.samples = 128 if args.samples is None else args.samples
    args.seqlen = 512 if args.seqlen is None else args.seqlen
    args.batch_size = 8 if args.batch_size is None else args.batch_size
    if args.stream:
        return _run_stream(args, pattern, config, f"{args.method} {pattern}")
    _check_not_stream(args)
    if args.out:
        api.check_output(args.out, args.overwrite)
    with _process_group(args) as group:
        loaded, report = api.prune(
            args.model, args.method, pattern, calib=args.calib, samples=args.samples,
            seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed,
            device=_device(args), skip=args.skip, config=config, evaluate=not args.no_eval,
            eval_data=args.eval_data, dtype=args.dtype, base=args.base, group=group,
            progress=_progress(f"{args.method} {pattern}", group))
    if group is not None and not group.is_main:
        return 0
    return _print_and_save(args, report, pattern,
                           lambda out: api.save_pruned(loaded, report, out, args.overwrite,
                                                       fmt=args.fmt,
                                                       tensor_format=args.tensor_format))


def _launched() -> bool:
    from .distributed import launched

    return launched()


def _device(args: argparse.Namespace) -> str:
    """--device, as this process's own GPU under torchrun (cuda -> cuda:LOCAL_RANK)."""
    from .distributed import launched, process_device

    return str(process_device(args.device)) if launched() else args.device


def _process_group(args: argparse.Namespace):
    """The torch.distributed group torchrun started this process in (None when alone)."""
    from .distributed import from_environment

    return from_environment(args.device)


def _check_not_stream(args: argparse.Namespace) -> None:
    if args.restart:
        raise UsageError("--restart applies with --stream")


def _run_stream(args: argparse.Namespace, pattern, config, desc: str) -> int:
    """prune/quantize --stream: block by block from the checkpoint to --out."""
    if not args.out:
        raise UsageError("--stream writes each block as it is done: pass --out DIR")
    if args.eval_data or getattr(args, "base", None):  # quantize has no --base
        raise UsageError(f"{'--eval-data' if args.eval_data else '--base'} does not apply with "
                         "--stream: the streamed model is never whole in memory")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # the user's own setting wins
        from .streaming import return_freed_memory

        return_freed_memory()
    with _process_group(args) as group:
        main = group is None or group.is_main
        path, report = api.prune_stream(
            args.model, args.out, args.method, pattern, calib=args.calib, samples=args.samples,
            seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed,
            device=_device(args), skip=args.skip, config=config, dtype=args.dtype,
            fmt=args.fmt, tensor_format=args.tensor_format, overwrite=args.overwrite,
            restart=args.restart, group=group, progress=_progress(desc, group),
            announce=_announce if main else None)
    if not main:
        return 0
    if not args.quiet:
        print(layer_table(report))
    resumed = report.config["stream"]["resumed_after_block"]
    if resumed:
        print(f"resumed an interrupted run after its block {resumed}")
    what = (f"{len(report.layers)} layers, {report.target_params:,} weights quantized"
            if pattern is None else f"{report.target_sparsity:.1%} of "
            f"{report.target_params:,} target weights pruned")
    print(f"{report.label}: {what} in {report.seconds['prune']:.1f} s, streamed block by block "
          f"(peak resident memory {size(report.config['stream']['peak_rss_bytes'] or 0)} "
          "with the Python runtime)")
    bits = [r.extra["bits_per_weight"] for r in report.layers if "bits_per_weight" in r.extra]
    if bits:
        print(f"kept weights quantized: {sum(bits) / len(bits):.3f} bits per weight (mean over "
              "layers) with scales")
    print(f"saved to {path} (report: {path / api.REPORT_FILE})")
    _print_size(path)
    return 0


def _announce(estimate) -> None:
    print(f"streaming a {size(estimate.checkpoint)} checkpoint; estimated peak "
          f"{size(estimate.total)} plus the Python runtime: block weights "
          f"{size(estimate.weights)}, Hessians {size(estimate.statistics)}, solver "
          f"{size(estimate.solver)}, one batch of activations {size(estimate.activations)}, "
          f"embeddings during the capture {size(estimate.capture)}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    from .models.loaders import load_model

    start = time.perf_counter()
    print("prunekit demo: all-MiniLM-L6-v2 (packaged), calibrated on the built-in stdlib corpus")
    reports = api.compare(
        load_model("minilm", api.model_dtype(args.dtype)), DEMO_RUNS, calib=args.calib, samples=args.samples,
        seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed, device=args.device,
        progress=lambda method, pattern: _progress(f"{method} {pattern}"))
    print(f"calibration: {args.samples} x {args.seqlen} tokens from {args.calib!r}; "
          f"fidelity on {reports[0].evaluation['n_texts']} held-out passages "
          "(mean cosine of dense vs pruned embeddings; nearest-neighbour agreement)")
    print(summary_table(reports))
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


def cmd_methods(_args: argparse.Namespace) -> int:
    methods = sorted(load_builtin_methods().items())
    print("layer-wise pruning (any model; calibration inputs of each layer):")
    for name, cls in methods:
        if cls.kind == "prune":
            print(f"  {name:12s} {cls.description}")
    print("quantization (prunekit quantize; pruned models keep their zeros):")
    for name, cls in methods:
        if cls.kind == "quantize":
            print(f"  {name:12s} {cls.description}")
    print("whole-network (digits-mlp, or any small nn.Module from Python; needs labels):")
    for name, text in NETWORK_METHODS.items():
        print(f"  {name:12s} {text}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quant import QuantSpec, parse_group

    spec = QuantSpec(args.bits, parse_group(args.group), not args.asym, args.clip)
    config = api.make_config(args.method, {**_settings(args), "quant": spec})
    if args.stream:
        return _run_stream(args, None, config, f"{args.method} {spec}")
    _check_not_stream(args)
    if args.out:
        api.check_output(args.out, args.overwrite)
    with _process_group(args) as group:
        loaded, report = api.quantize(
            args.model, args.method, config=config, calib=args.calib, samples=args.samples,
            seqlen=args.seqlen, batch_size=args.batch_size, seed=args.seed,
            device=_device(args), skip=args.skip, evaluate=not args.no_eval,
            eval_data=args.eval_data, dtype=args.dtype, group=group,
            progress=_progress(f"{args.method} {spec}", group))
    if group is not None and not group.is_main:
        return 0
    if not args.quiet:
        print(layer_table(report))
    print(f"{report.label}: {len(report.layers)} layers, {report.target_params:,} weights at "
          f"{report.bits_per_weight:.3f} bits each with scales (fp16: 16), "
          f"{report.target_sparsity:.1%} zeros kept, in {report.seconds['prune']:.1f} s")
    for line in evaluation_lines(report):
        print(line)
    if args.out:
        path = api.save_pruned(loaded, report, args.out, args.overwrite, fmt=args.fmt,
                               tensor_format=args.tensor_format)
        print(f"saved to {path} (report: {path / api.REPORT_FILE})")
        _print_size(path)
    else:
        print("not saved: pass --out DIR to keep the quantized model")
    return 0


def _print_size(path) -> None:
    from .formats.checkpoint import inspect_checkpoint, is_checkpoint

    if is_checkpoint(path):
        print(inspect_table(inspect_checkpoint(path), tensors=False))


def cmd_ntk(args: argparse.Namespace) -> int:
    import json

    from .analysis.study import Budget, kernel_study, masks_for, parse_mask, small_network
    from .models.digits import load_digits_split

    if args.model.split(":", 1)[0] not in ("digits-mlp", "digits-cnn"):
        raise UsageError(f"prunekit ntk runs on digits-mlp[:HIDDEN] or digits-cnn[:CHANNELS], "
                         f"not {args.model!r}; from Python, prunekit.analysis.ntk takes any "
                         "nn.Module")
    requests = [parse_mask(m) for m in args.masks]
    if args.out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("prunekit ntk --out draws its plots with matplotlib: pip install "
                             "'prunekit[analysis]' (or drop --out for the table only)") from None
    init = small_network(args.model, args.seed)
    out = api.check_output(args.out, args.overwrite) if args.out else None
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

        api.write_folder(out, args.overwrite, write)
        print(f"saved to {out} (ntk_report.md, ntk_report.json, ntk_spectra.png, ntk_overlap.png)")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .analysis.pareto import load_grid
    from .report import pareto_table

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
                        progress=progress, labels=args.labels)
    bar.n = len(grid)
    bar.close()
    print(pareto_table(result))
    print(f"frontier: {', '.join(p['name'] for p in result['points'] if p['frontier'])}")
    print(f"report: {args.out}/pareto.md (pareto.json, pareto.png)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .formats.checkpoint import inspect_checkpoint

    info = inspect_checkpoint(args.path)
    print(json.dumps(info, indent=1) if args.json else inspect_table(info, not args.totals))
    return 0


COMMANDS = {"prune": cmd_prune, "quantize": cmd_quantize, "inspect": cmd_inspect,
            "ntk": cmd_ntk, "pareto": cmd_pareto, "demo": cmd_demo, "methods": cmd_methods}


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _quiet_transformers(verbose: bool) -> None:
    """transformers' own weight-loading bars would interleave with ours; keep its warnings."""
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (errors print one line to stderr)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_transformers(args.verbose)
    hint = "" if args.verbose else " (rerun with --verbose for the traceback)"
    try:
        if args.command not in DISTRIBUTED_COMMANDS and _launched():
            raise UsageError(f"prunekit {args.command} runs in one process: start it without "
                             f"torchrun (under torchrun: {', '.join(DISTRIBUTED_COMMANDS)})")
        return COMMANDS[args.command](args)
    except PrunekitError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"prunekit: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = ("; the finished blocks are kept: rerun the same command to resume"
                  if getattr(args, "stream", False) else "")
        print(f"prunekit: interrupted; no output was written{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the CLI's outer boundary: anything else is a bug or an OS error
        if args.verbose:
            traceback.print_exc()
        print(f"prunekit: error: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
