"""Result dataclasses -> JSON, plain-text tables. The only place (with the cli package) that formats."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .analysis.grid import LITERATURE
from .methods.base import LayerResult


@dataclass
class PruneReport:
    """What one prune run did to a model, per layer and in total."""

    model: str
    method: str
    pattern: str
    calibration: dict[str, Any]
    device: str
    layers: list[LayerResult]
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    params_total: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def target_params(self) -> int:
        return sum(r.shape[0] * r.shape[1] for r in self.layers)

    @property
    def target_sparsity(self) -> float:
        """Zeros among the weights of the compressed layers."""
        n = self.target_params
        return sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers) / n if n else 0.0

    @property
    def model_sparsity(self) -> float:
        """Pruned weights as a fraction of all model parameters (embeddings included)."""
        return self.target_sparsity * self.target_params / self.params_total if self.params_total else 0.0

    @property
    def mean_rel_error(self) -> float | None:
        errs = [r.rel_error for r in self.layers if r.rel_error is not None]
        return sum(errs) / len(errs) if errs else None

    @property
    def quantized(self) -> bool:
        return any(r.quantized is not None for r in self.layers)

    @property
    def bits_per_weight(self) -> float | None:
        """Mean bits per target weight of the quantized layers' codes and scales (pruned
        weights counted as stored densely: the formats page says what sparse storage saves)."""
        layers = [r for r in self.layers if r.quantized is not None]
        n = sum(r.shape[0] * r.shape[1] for r in layers)
        return sum(r.bits_per_weight * r.shape[0] * r.shape[1] for r in layers) / n if n else None

    @property
    def label(self) -> str:
        """Method, pattern and grid, e.g. 'sparsegpt 0.5 + int4 g128 sym'."""
        grids = sorted({r.extra["quant"] for r in self.layers if "quant" in r.extra})
        return " + ".join([f"{self.method} {self.pattern}", *grids])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, layers=[]))
        d["layers"] = [r.to_dict() for r in self.layers]
        d["totals"] = {
            "layers": len(self.layers),
            "target_params": self.target_params,
            "params_total": self.params_total,
            "target_sparsity": self.target_sparsity,
            "model_sparsity": self.model_sparsity,
            "mean_rel_error": self.mean_rel_error,
            "max_damping": max((r.damping or 0.0 for r in self.layers), default=0.0),
            "bits_per_weight": self.bits_per_weight,
        }
        return d


def write_json(report: PruneReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def layer_table(report: PruneReport) -> str:
    """Per-layer table: name, shape, sparsity, relative error, damping, seconds; then totals."""
    bits = report.quantized
    rows = [("layer", "shape", "sparsity", *(("bits/w",) if bits else ()), "rel.err", "damp", "sec")]
    for r in report.layers:
        rows.append((r.name, f"{r.shape[0]}x{r.shape[1]}", f"{r.sparsity:.1%}",
                     *((_fmt(r.bits_per_weight, ".3f"),) if bits else ()),
                     _fmt(r.rel_error, ".4f"), _fmt(r.damping, ".0e"), f"{r.seconds:.3f}"))
    rows.append(("TOTAL", f"{report.target_params:,} w", f"{report.target_sparsity:.1%}",
                 *((_fmt(report.bits_per_weight, ".3f"),) if bits else ()),
                 _fmt(report.mean_rel_error, ".4f") + " (mean)", "",
                 f"{sum(r.seconds for r in report.layers):.2f}"))
    return _table(rows)


def evaluation_lines(report: PruneReport) -> list[str]:
    ev = report.evaluation
    if not ev:
        return []
    if "dense_accuracy" in ev:
        return [f"test accuracy on {ev['n_test']} held-out samples of {ev['data']}: dense "
                f"{ev['dense_accuracy']:.2%} -> pruned {ev['pruned_accuracy']:.2%} (loss "
                f"{ev['dense_loss']:.4f} -> {ev['pruned_loss']:.4f})"]
    probe = ([f"linear probe on {ev['task']} ({ev['probe_classes']} classes, "
              f"{ev['probe_train']} training / {ev['probe_test']} test articles, first "
              f"{ev['probe_max_length']} tokens): accuracy dense {ev['dense_probe_accuracy']:.1%} "
              f"-> pruned {ev['probe_accuracy']:.1%}"] if "probe_accuracy" in ev else [])
    if "cosine" in ev:
        return [f"embedding fidelity on {ev['n_texts']} held-out passages: mean cosine "
                f"{ev['cosine']:.4f}, nearest-neighbour agreement {ev['nn_agreement']:.1%}",
                *probe]
    return [f"perplexity dense {ev['dense_ppl']:.3f} -> pruned {ev['pruned_ppl']:.3f}",
            f"protocol: {ev['protocol']}"]


def size(n: float) -> str:
    """Bytes for people: 512 B, 3.4 KiB, 12.0 MiB, 1.50 GiB."""
    for unit, digits in (("GiB", 2), ("MiB", 1), ("KiB", 1)):
        scale = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}[unit]
        if n >= scale:
            return f"{n / scale:,.{digits}f} {unit}"
    return f"{int(n)} B"


def report_text(report: PruneReport) -> str:
    """The per-layer table, totals and evaluation as plain text (prune_report.txt)."""
    cal = report.calibration
    size = (f"{cal.get('samples')} x {cal['seqlen']} tokens" if cal.get("seqlen")
            else f"{cal.get('samples')} samples")
    head = (f"{report.model}: {report.label}; calibration {size} "
            f"from {cal.get('source')!r}")
    return "\n".join([head, layer_table(report), *evaluation_lines(report)])


def summary_table(reports: list[PruneReport]) -> str:
    """One row per run: method, pattern, sparsity, fidelity or perplexity, error, time."""
    rows = [("method", "pattern", "sparsity", "bits/w", "cosine", "NN agree", "ppl", "accuracy",
             "mean rel.err", "prune s")]
    for r in reports:
        ev = r.evaluation
        rows.append((r.method, r.pattern, f"{r.target_sparsity:.1%}", _fmt(r.bits_per_weight, ".2f"),
                     _fmt(ev.get("cosine"), ".4f"), _fmt(ev.get("nn_agreement"), ".1%"),
                     _fmt(ev.get("pruned_ppl"), ".2f"), _fmt(ev.get("pruned_accuracy"), ".2%"),
                     _fmt(r.mean_rel_error, ".4f"),
                     f"{r.seconds.get('prune', 0.0):.2f}"))
    keep = [i for i in range(len(rows[0])) if any(row[i] != "-" for row in rows[1:])]
    return _table([tuple(row[i] for i in keep) for row in rows])  # drop all-empty columns


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _times(ratio: float) -> str:
    """'3.20x smaller than' or '1.16x larger than' for a size ratio reference / stored."""
    if ratio >= 1:
        return f"{ratio:.2f}x smaller than"
    return f"{1 / ratio:.2f}x larger than" if ratio > 0 else "no smaller than"


def inspect_table(info: dict[str, Any], tensors: bool = True) -> str:
    """``prunekit inspect``: per tensor format, sparsity, bits per value, bytes; then totals
    and the ratios to dense float16 and float32, from the real file sizes."""
    out = []
    if tensors:
        rows = [("tensor", "format", "shape", "sparsity", "bits/value", "bytes")]
        for t in info["tensors"]:
            shape = "x".join(map(str, t["shape"])) if t["shape"] else ""
            rows.append((t["name"], t["format"], shape, _fmt(t["sparsity"], ".1%"),
                         _fmt(t["bits_per_value"], ".3f"), f"{t['bytes']:,}"))
        out.append(_table(rows))
    tot = info["totals"]
    files = ", ".join(f"{name} {size:,} B" for name, size in info["files"].items())
    out.append(f"{info['path']}: {tot['values']:,} values, {tot['sparsity']:.1%} zeros, "
               f"{tot['bytes']:,} bytes on disk ({files}) = {tot['bits_per_value']:.3f} bits per "
               f"value; {_times(tot['ratio_fp16'])} dense fp16 ({tot['dense_fp16_bytes']:,} B), "
               f"{_times(tot['ratio_fp32'])} dense fp32")
    packed = [t for t in info["tensors"] if t["shape"] and not t["format"].startswith(("dense", "tied"))]
    if packed:
        n = sum(math.prod(t["shape"]) for t in packed)
        b = sum(t["bytes"] for t in packed)
        out.append(f"compressed tensors: {len(packed)} holding {n:,} values in {b:,} B = "
                   f"{8 * b / n:.3f} bits per value ({_times(2 * n / b)} fp16); the other "
                   f"{tot['values'] - n:,} values are stored dense")
    return "\n".join(out)


NTK_COLUMNS = ("sparsity", "effective_rank", "participation_ratio", "cka", "relative_distance",
               "top{k}_overlap", "ntk_regression_accuracy", "trained_accuracy")


def ntk_table(rows: list[dict[str, Any]], top: int = 10) -> str:
    """``prunekit ntk``: one row per mask (dense first) with the kernel metrics."""
    cols = [c.format(k=top) for c in NTK_COLUMNS if c.format(k=top) in rows[0]]
    table = [("mask", *cols)]
    for r in rows:
        table.append((r["mask"], *(f"{r[c]:.1%}" if c == "sparsity" else f"{r[c]:.4f}"
                                    for c in cols)))
    return _table(table)


def ntk_plots(rows: list[dict[str, Any]], out: Path, top: int = 10) -> list[Path]:
    """Spectra of the dense and every masked kernel, and top-k overlap against sparsity per
    method, as PNG files in ``out``."""
    import matplotlib  # optional: prunekit[analysis]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: after choosing the headless backend

    paths = [out / "ntk_spectra.png", out / "ntk_overlap.png"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        spec = [max(v, 1e-12) for v in r["spectrum"][:100]]
        total = sum(r["spectrum"]) or 1.0
        ax.semilogy([v / total for v in spec], label=r["mask"])
    ax.set(xlabel="index", ylabel="eigenvalue / trace", title="NTK spectra at initialisation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    methods: dict[str, list[tuple[float, float]]] = {}
    for r in rows[1:]:
        methods.setdefault(r["mask"].split(" ")[0], []).append(
            (r["sparsity"], r[f"top{top}_overlap"]))
    for m, pts in methods.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set(xlabel="sparsity", ylabel=f"top-{top} eigenspace overlap with the dense NTK")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def _loss(point: dict[str, Any], quality: str) -> float:
    """Relative quality loss against the dense model: 1 − cosine, 1 − accuracy / dense
    accuracy, or ppl / dense ppl − 1."""
    if quality == "cosine":
        return 1.0 - point[quality]
    if quality == "accuracy":
        return 1.0 - point[quality] / point["evaluation"]["dense_accuracy"]
    dense = point["evaluation"].get("dense_ppl")
    return point[quality] / dense - 1.0 if dense else float("nan")


def pareto_table(result: dict[str, Any]) -> str:
    q = result["quality_metric"]
    rows = [("point", "recipe", "bytes", "x fp16", "layers x fp16", q, "loss", "sec", "frontier")]
    for p in sorted(result["points"], key=lambda p: p["bytes"]):
        rows.append((p["name"], p["label"], f"{p['bytes']:,}", f"{p['ratio_fp16']:.2f}",
                     f"{p.get('layer_ratio_fp16', float('nan')):.2f}",
                     f"{p[q]:.4f}", f"{_loss(p, q):.2%}", f"{p['seconds']:.0f}",
                     "*" if p["frontier"] else ""))
    return _table(rows)


def _best_near(points: list[dict[str, Any]], key: str, frac: float, quality: str,
               higher: bool) -> dict[str, Any]:
    """The best point among those whose ``key`` ratio is within 10 % (in log) of the nearest
    one to 1/frac."""
    dist = {id(p): abs(math.log(max(p.get(key, 0.0), 1e-9) * frac)) for p in points}
    closest = min(dist.values())
    near = [p for p in points if dist[id(p)] <= closest + 0.1]
    return max(near, key=lambda p: p[quality] if higher else -p[quality])


def pareto_report(result: dict[str, Any], out: Path) -> None:
    """pareto.json, pareto.md (table, plot, the literature's rough frontier beside the measured
    one, which points beat which) and pareto.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    q, points = result["quality_metric"], result["points"]
    lines = [f"# Accuracy against size: {result['model']}", "",
             f"Quality: {q} ({'higher' if result['higher_is_better'] else 'lower'} is better); "
             f"loss relative to the dense float32 model; bytes of each point's real prunekit "
             f"checkpoint (prunekit.safetensors + prunekit.json); dense fp16 would be "
             f"{result['dense_fp16_bytes']:,} B. Calibration: {result['calibration']}.", "",
             "![frontier](pareto.png)", "", "```", pareto_table(result), "```", "",
             "'x fp16' is the whole checkpoint against the model in dense fp16; 'layers x fp16' "
             "the compressible Linear layers alone (embeddings and norms are never pruned or "
             "quantized, and in a small model they dominate the file).", "",
             "The literature's rough frontier beside the best measured point nearest in size, "
             "by the whole file and by the compressible layers:", "",
             "| literature | x smaller than fp16 | loss | nearest (file) | x | loss | "
             "nearest (layers) | layers x | loss |", "|---|---|---|---|---|---|---|---|---|"]
    for label, frac, loss in LITERATURE:
        near = _best_near(points, "ratio_fp16", frac, q, result["higher_is_better"])
        lay = _best_near(points, "layer_ratio_fp16", frac, q, result["higher_is_better"])
        lines.append(f"| {label} | {1 / frac:.0f} | {loss:.0%} | {near['name']} | "
                     f"{near['ratio_fp16']:.2f} | {_loss(near, q):.2%} | {lay['name']} | "
                     f"{lay.get('layer_ratio_fp16', float('nan')):.2f} | {_loss(lay, q):.2%} |")
    lines += ["", "Points on the frontier and the points each one beats (no larger, no worse):", ""]
    for p in sorted(points, key=lambda p: p["bytes"]):
        if p["frontier"]:
            beaten = result["dominates"][p["name"]]
            lines.append(f"- **{p['name']}** ({p['label']}): beats "
                         f"{', '.join(beaten) if beaten else 'none'}")
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    _pareto_plot(result, out / "pareto.png")


def _pareto_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib  # optional: prunekit[analysis]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: after choosing the headless backend

    q, points = result["quality_metric"], result["points"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        ax.scatter(p["bytes"] / 2**20, p[q], c="tab:red" if p["frontier"] else "tab:gray", s=20)
        ax.annotate(p["name"], (p["bytes"] / 2**20, p[q]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    front = sorted((p for p in points if p["frontier"]), key=lambda p: p["bytes"])
    ax.plot([p["bytes"] / 2**20 for p in front], [p[q] for p in front], c="tab:red",
            label="measured frontier")
    ax.set(xscale="log", xlabel="checkpoint size (MiB, log)", ylabel=q,
           title=f"{result['model']}: quality against size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
