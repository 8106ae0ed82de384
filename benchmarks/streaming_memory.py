"""Streamed pruning under a memory limit several times smaller than the checkpoint.

Builds once (cached in --workdir) a random Llama-style checkpoint in float32, saved as sharded
safetensors with a small BPE tokenizer trained here on the stdlib's pydoc topics (nothing is
downloaded). Then, each in a child process measured from outside:

  - the Python runtime alone (imports prunekit's CLI, torch and transformers), the baseline;
  - ``prunekit prune --stream`` with SparseGPT 50 % under a limit on the process's own memory;
  - the same prune in memory (no --stream, --no-eval), without a limit;
  - the same in-memory prune under the limit (expected to fail: the model does not fit;
    transformers maps the checkpoint privately, so it fails as it maps the first file).

The limit is RLIMIT_DATA (--limit-mib), set in the child before exec. Since Linux 4.7 it bounds
the private writable mappings: heap, anonymous mmap, thread stacks, the Python runtime included,
so every tensor the process allocates counts; prunekit maps the checkpoint files shared and
read-only, and those pages (page cache the kernel may drop) do not count. RLIMIT_AS would count
the mapped checkpoint and every reserved range of address space; RLIMIT_RSS is not enforced by
Linux; a memory cgroup would charge the page cache of the checkpoint reads, and needs root and
a cgroup tree of one's own. RLIMIT_DATA counts address space, not resident pages: memory that
is reserved but never touched counts too, so glibc's malloc settings matter. With its default,
glibc raises the mmap threshold each time a large block is freed, after which large blocks come
from the heap and freed ones linger there as address space. `prunekit prune --stream` fixes
the threshold at 1 MiB itself (mallopt), so by default the children run in an unchanged
environment, as a user's would; --malloc-mmap-threshold BYTES / --malloc-arena-max N set
MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX in the children instead (an explicit
MALLOC_MMAP_THRESHOLD_ also applies to the in-memory runs, which prunekit leaves alone).

Peaks come from wait4 (ru_maxrss, the resident set, including pages of the mapped files) and
from /proc/PID/status sampled every --poll seconds (RssAnon, RssFile, VmData). The streamed
peak above the runtime baseline is set against the estimate prunekit prints before it starts.
Finally both outputs are loaded with prunekit.load and compared tensor by tensor (bit for bit).

    python benchmarks/streaming_memory.py [--workdir /tmp/prunekit-streaming-memory]
        [--limit-mib 768] [--malloc-mmap-threshold BYTES] [--quick]
        [--layers 48 --hidden 1024 --intermediate 2816 --heads 16 --vocab 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmData")
RUNTIME_CODE = ("import time, torch, transformers, safetensors, tokenizers, prunekit.cli, "
                "prunekit.api, prunekit.streaming; "
                "from transformers import LlamaForCausalLM; time.sleep(1.0)")
QUICK = dict(layers=4, hidden=256, intermediate=704, heads=8, vocab=1024)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/prunekit-streaming-memory",
                    help="checkpoint cache and outputs (the checkpoint is reused when it exists)")
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16, help="attention heads (and key/value heads)")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary trained here")
    ap.add_argument("--shard-mib", type=int, default=500, help="max_shard_size of the checkpoint")
    ap.add_argument("--limit-mib", type=int, default=768,
                    help="RLIMIT_DATA of the limited children, MiB")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--malloc-arena-max", default="",
                    help="MALLOC_ARENA_MAX of every child (default '': glibc's own)")
    ap.add_argument("--malloc-mmap-threshold", default="",
                    help="MALLOC_MMAP_THRESHOLD_ of every child, bytes (default '': glibc's "
                         "dynamic threshold, which prune --stream replaces by 1 MiB itself)")
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between /proc samples")
    ap.add_argument("--no-oom-check", action="store_true",
                    help="skip the in-memory prune under the limit")
    ap.add_argument("--quick", action="store_true",
                    help=f"small model for a sanity run ({QUICK}); ratio below 1")
    args = ap.parse_args()
    if args.quick:
        vars(args).update(QUICK)
        args.workdir = f"{args.workdir}-quick"
    return args


# ---------------------------------------------------------------------------------------------
# the checkpoint


def bpe_tokenizer(vocab: int):
    """A BPE tokenizer (split on whitespace) of about ``vocab`` tokens trained on the stdlib's
    pydoc topics, wrapped for transformers."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(list(topics.values()), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def checkpoint_spec(args: argparse.Namespace) -> dict:
    return {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
            "heads": args.heads, "vocab": args.vocab, "shard_mib": args.shard_mib, "seed": 0,
            "positions": max(512, args.seqlen)}


def ensure_checkpoint(args: argparse.Namespace) -> Path:
    """The random Llama checkpoint of ``args`` in --workdir, built unless already there."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(args.workdir) / "checkpoint"
    spec = checkpoint_spec(args)
    marker = folder / "benchmark_spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        print(f"reusing the checkpoint in {folder}", file=sys.stderr)
        return folder
    t0 = time.perf_counter()
    tokenizer = bpe_tokenizer(args.vocab)
    config = LlamaConfig(
        vocab_size=max(args.vocab, len(tokenizer)), hidden_size=args.hidden,
        intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=spec["positions"], tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"])
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(folder, max_shard_size=f"{args.shard_mib}MB")
    tokenizer.save_pretrained(folder)
    del model
    marker.write_text(json.dumps(spec))
    print(f"built {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder


def safetensors_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# measuring a child process


@dataclass
class Run:
    """One child process: its outcome and peaks (bytes)."""

    name: str
    limit: int | None  # RLIMIT_DATA, bytes
    rc: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    maxrss: int = 0  # wait4's ru_maxrss: peak resident set, file pages of mapped files included
    peaks: dict[str, int] = field(default_factory=dict)  # peak of each STATUS_KEYS field
    log: Path | None = None

    def tail(self, n: int = 3) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log else []
        return " | ".join(line.strip().rsplit("\r", 1)[-1] for line in lines[-n:])

    def outcome(self) -> str:
        return "ok" if self.rc == 0 else f"exit {self.rc}"


def read_status(pid: int) -> dict[str, int]:
    """The memory fields of /proc/PID/status in bytes (empty once the process has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)
            if k in STATUS_KEYS}


def poll_peaks(pid: int, peaks: dict[str, int], stop: threading.Event, every: float) -> None:
    """Keep in ``peaks`` the largest value seen of each field until ``stop`` is set."""
    while not stop.is_set():
        for k, v in read_status(pid).items():
            peaks[k] = max(peaks.get(k, 0), v)
        stop.wait(every)


def limit_data(limit: int | None):
    """A preexec_fn setting RLIMIT_DATA (soft and hard) to ``limit`` bytes in the child."""
    if limit is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def measure(name: str, argv: list[str], limit: int | None, env: dict, log: Path,
            poll: float) -> Run:
    """Run ``argv`` with RLIMIT_DATA ``limit`` (None: none), sampling /proc every ``poll`` s;
    its stdout and stderr go to ``log``."""
    run = Run(name, limit, log=log)
    stop = threading.Event()
    print(f"[{name}] {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=limit_data(limit))
    watcher = threading.Thread(target=poll_peaks, args=(proc.pid, run.peaks, stop, poll))
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    run.wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    proc.returncode = run.rc = os.waitstatus_to_exitcode(status)
    run.maxrss = usage.ru_maxrss * 1024  # KiB on Linux
    run.cpu = usage.ru_utime + usage.ru_stime
    print(f"[{name}] {run.outcome()} after {run.wall:.0f} s: {run.tail(1)}", file=sys.stderr)
    return run


def child_env(args: argparse.Namespace) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    for var, value in (("MALLOC_ARENA_MAX", args.malloc_arena_max),
                       ("MALLOC_MMAP_THRESHOLD_", args.malloc_mmap_threshold)):
        env.pop(var, None)
        if value:
            env[var] = value
    return env


def prune_argv(args: argparse.Namespace, folder: Path, out: Path, stream: bool) -> list[str]:
    argv = [sys.executable, "-m", "prunekit.cli", "prune", str(folder), "--method", "sparsegpt",
            "--sparsity", "0.5", "--samples", str(args.samples), "--seqlen", str(args.seqlen),
            "--batch-size", str(args.batch_size), "--out", str(out), "--overwrite", "--quiet"]
    return argv + (["--stream", "--restart"] if stream else ["--no-eval"])


def estimate_of(run: Run, out: Path) -> int | None:
    """The estimate of a streamed run: exact from its report, else the MiB it printed."""
    report = out / "prune_report.json"
    if run.rc == 0 and report.is_file():
        return json.loads(report.read_text())["config"]["stream"]["estimate_bytes"]
    found = re.search(r"estimated peak ([\d,.]+) (B|KiB|MiB|GiB)",
                      run.log.read_text(errors="replace"))
    if found is None:
        return None
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[found.group(2)]
    return round(float(found.group(1).replace(",", "")) * scale)


# ---------------------------------------------------------------------------------------------
# comparing the outputs and printing


def compare_outputs(a: Path, b: Path) -> tuple[int, int, float, list[str]]:
    """(identical tensors, tensors, max |a - b|, names that differ or are missing) of two
    prunekit checkpoints."""
    import torch

    import prunekit

    sa, sb = prunekit.load(a).model.state_dict(), prunekit.load(b).model.state_dict()
    differ = sorted(set(sa) ^ set(sb))
    same, worst = 0, 0.0
    for name in sorted(set(sa) & set(sb)):
        x, y = sa[name], sb[name]
        if x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y):
            same += 1
            continue
        differ.append(name)
        if x.shape == y.shape:
            worst = max(worst, (x.double() - y.double()).abs().max().item())
    return same, len(set(sa) | set(sb)), worst, differ


def mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f}"


def runs_table(runs: list[Run]) -> str:
    header = ("| run | RLIMIT_DATA MiB | outcome | wall s | cpu s | peak RSS MiB (ru_maxrss) "
              "| peak RssAnon MiB | peak RssFile MiB | peak VmData MiB |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in runs:
        rows.append(f"| {r.name} | {mib(r.limit)} | {r.outcome()} "
                    f"| {r.wall:.0f} | {r.cpu:.0f} | {mib(r.maxrss)} "
                    f"| {mib(r.peaks.get('RssAnon'))} | {mib(r.peaks.get('RssFile'))} "
                    f"| {mib(r.peaks.get('VmData'))} |")
    return "\n".join(rows)


def summary_table(ckpt: int, limit: int, estimate: int | None, base: Run, streamed: Run,
                  memory: Run, compared: tuple[int, int, float, list[str]] | None) -> str:
    """The figures the benchmark is for, in one table."""
    est = estimate or 0
    anon = streamed.peaks.get("RssAnon", 0) - base.peaks.get("RssAnon", 0)
    data = streamed.peaks.get("VmData", 0) - base.peaks.get("VmData", 0)
    ratio = (lambda x: f" ({x / est:.2f} × estimate)") if est else (lambda x: "")
    rows = [
        ("checkpoint (safetensors files)", f"{mib(ckpt)} MiB"),
        ("memory limit (RLIMIT_DATA)", f"{mib(limit)} MiB"),
        ("checkpoint / limit", f"{ckpt / limit:.2f}"),
        ("estimate printed by prunekit (runtime excluded)", f"{mib(estimate)} MiB"),
        ("runtime baseline: RssAnon / VmData / RSS",
         f"{mib(base.peaks.get('RssAnon'))} / {mib(base.peaks.get('VmData'))} / "
         f"{mib(base.maxrss)} MiB"),
        (f"streamed ({streamed.outcome()}): peak RssAnon above runtime",
         f"{mib(anon)} MiB{ratio(anon)}"),
        ("streamed: peak VmData above runtime",
         f"{mib(data)} MiB{ratio(data)}"),
        ("streamed peak RssAnon vs estimate + runtime RssAnon",
         f"{mib(streamed.peaks.get('RssAnon'))} vs {mib(est + base.peaks.get('RssAnon', 0))} MiB"),
        ("in-memory peak RssAnon (no limit)", f"{mib(memory.peaks.get('RssAnon'))} MiB"),
        ("wall: streamed / in memory", f"{streamed.wall:.0f} s / {memory.wall:.0f} s"),
        ("outputs bit for bit identical", identical_text(compared)),
    ]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def identical_text(compared: tuple[int, int, float, list[str]] | None) -> str:
    if compared is None:
        return "not compared (a prune failed)"
    same, total, worst, differ = compared
    text = (f"{'yes' if same == total else 'NO'}: {same} of {total} tensors, "
            f"max abs diff {worst:.3g}")
    return text + (f"; differ: {', '.join(differ[:3])}" if differ else "")


def main() -> None:
    args = parse_args()
    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    folder = ensure_checkpoint(args)
    ckpt, env, poll = safetensors_bytes(folder), child_env(args), args.poll
    limit = args.limit_mib * MIB
    base = measure("runtime only", [sys.executable, "-c", RUNTIME_CODE], limit, env,
                   work / "runtime.log", poll)
    streamed = measure("streamed, limited", prune_argv(args, folder, work / "out-stream", True),
                       limit, env, work / "stream.log", poll)
    memory = measure("in memory, no limit", prune_argv(args, folder, work / "out-memory", False),
                     None, env, work / "memory.log", poll)
    runs = [base, streamed, memory]
    if not args.no_oom_check:
        runs.append(measure("in memory, limited",
                            prune_argv(args, folder, work / "out-memory-limited", False),
                            limit, env, work / "memory-limited.log", poll))
    ok = streamed.rc == 0 and memory.rc == 0
    compared = compare_outputs(work / "out-stream", work / "out-memory") if ok else None
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; Llama {args.layers} layers × "
          f"hidden {args.hidden}, intermediate {args.intermediate}, vocab {args.vocab}, float32; "
          f"SparseGPT 50 %, {args.samples} × {args.seqlen} tokens of stdlib text in batches "
          f"of {args.batch_size}; MALLOC_ARENA_MAX={args.malloc_arena_max or 'unset'}, "
          f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'unset'}; "
          f"/proc sampled every {poll * 1000:.0f} ms")
    print(runs_table(runs))
    print()
    print(summary_table(ckpt, limit, estimate_of(streamed, work / "out-stream"), base, streamed,
                        memory, compared))
    for r in runs:
        if r.rc:
            print(f"\n{r.name}: {r.outcome()}; last output: {r.tail(1)}")


if __name__ == "__main__":
    main()
