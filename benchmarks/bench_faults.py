"""Fault campaign (issue 17, part 6 a, c, d): weightgen's readers and CLI fed broken input.

(a) Fuzz: valid files (checkpoints of small nets saved with `save_model`, one of them without a
    checksum as older weightgen wrote them, a hub folder, and a debug zoo built with epochs=1) are
    mutated, seeded: bit flips, truncation, header JSON edits (types swapped, huge ints, Infinity,
    deep nesting, dtype relabels to ints and float8, extra leading dims, missing keys), foreign files
    (pickles and torch.save files whose payload would create a marker file if anything unpickled
    them, zips, PNG, JSON, random bytes, empty), bad paths, and zoo.json / records.jsonl / shard
    damage. Each goes to `read_metadata`, `load_model`, `weightgen inspect` and `eval` (typer's
    CliRunner, in-process), `zoo import`'s reader (and the `weightgen zoo import` command on every
    fifth file), and for zoos to `ZooStore` (records, every model, every arch) and
    `weightgen zoo info`. Outcomes: ok, refused (a WeightgenError, or a usage error), crash (anything
    else). Also counted: code executions (the marker appeared), silent corruption (a reader returned
    weights or metadata that differ from the original although the file carries a checksum, or a
    zoo model other than the one asked for), non-finite weights accepted, and "unverifiable"
    changes accepted from files without a checksum (the documented price of reading old files).
(c) Repeatability: one model saved twice in this process and once in each of two subprocesses, and
    one zoo shard written twice, must give byte-identical files.
(b) Kill -9 (benchmarks/bench_kills.py, with --kills N per job): zoo build, encoder and generator
    training killed at random points and resumed must end identical to an uninterrupted run.
(d) CLI abuse, in real subprocesses (plus a 1 MB prompt in-process: argv caps one argument at
    128 KB): huge prompts, control characters, absurd -n / --steps, NaN temperatures, huge seeds,
    a YAML anchor bomb, a billion seeds, eval --out onto a folder, an over-long path, damaged files.
    Each must exit 2 with one line on stderr and no traceback, within a time bound, without growing
    past a memory bound, and leave no file behind.

    OMP_NUM_THREADS=1 python benchmarks/bench_faults.py [--files 10000] [--seed 0]

Progress goes to stderr; the last line on stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import weightgen
from weightgen.checkpoint import read_metadata
from weightgen.cli_checks import USAGE_ERRORS
from weightgen.errors import WeightgenError
from weightgen.zoo.importing import read_source
from weightgen.zoo.store import ZooStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_cli import cli, cli_abuse, repeatability, save_same  # noqa: E402
from faults_files import (  # noqa: E402
    build_fixtures,
    foreign_file,
    has_checksum,
    mutate_safetensors,
    mutate_zoo,
)


class Tally:
    def __init__(self):
        self.files = 0
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.crashes: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.silent = self.nonfinite = self.unverifiable = 0
        self.silent_examples: list[str] = []
        self.slowest = 0.0

    def attempt(self, target: str, case: str, fn):
        """Run one reader; returns its result, or None when it refused or crashed."""
        start = time.perf_counter()
        try:
            result, outcome = fn(), "ok"
        except (WeightgenError, *USAGE_ERRORS):  # what main() reports with exit status 2
            result, outcome = None, "refused"
        except Exception as e:  # noqa: BLE001 - counting every other exception is the point: each is a crash
            result, outcome = None, "crash"
            key = f"{target}: {type(e).__name__} ({case})"
            self.crashes[key] += 1
            self.examples.setdefault(key, str(e)[:200])
        self.slowest = max(self.slowest, time.perf_counter() - start)
        self.outcomes[target][outcome] += 1
        return result

    def silently(self, what: str) -> None:
        self.silent += 1
        if len(self.silent_examples) < 10:
            self.silent_examples.append(what)

    def figures(self) -> dict:
        totals = collections.Counter()
        for c in self.outcomes.values():
            totals.update(c)
        return {"files": self.files, "attempts": sum(totals.values()), "ok": totals["ok"], "refused": totals["refused"],
                "crashes": totals["crash"], "by_reader": {k: dict(v) for k, v in sorted(self.outcomes.items())},
                "crash_kinds": dict(self.crashes.most_common(15)), "crash_examples": dict(list(self.examples.items())[:15]),
                "silent_corruptions": self.silent, "silent_examples": self.silent_examples,
                "nonfinite_accepted": self.nonfinite, "unverifiable_accepted": self.unverifiable,
                "slowest_call_s": round(self.slowest, 3)}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def run_checkpoint_case(tally: Tally, fix: dict, rng: random.Random, index: int, run_eval: bool) -> None:
    work = fix["root"] / "cases"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    path, base, checksummed = work / "m.safetensors", None, True
    roll = rng.random()
    if roll < 0.72:
        base = rng.choice(["mlp", "cnn", "iris", "old"])
        case, data = mutate_safetensors(rng, fix["bases"][base][0])
        checksummed = has_checksum(data)
        if rng.random() < 0.15:  # the same damage inside a hub-style folder
            (work / "hub").mkdir()
            path = work / "hub" / "model.safetensors"
            (work / "hub" / "config.json").write_text(rng.choice(["{", "[]", json.dumps(fix["meta"]["mlp"])]))
        path.write_bytes(data)
        path = path.parent if path.name == "model.safetensors" else path
    elif roll < 0.92:
        case, data = foreign_file(rng, fix["marker"], fix)
        path.write_bytes(data)
    else:
        case = rng.choice(["long-name", "long-path", "nul", "missing", "empty-dir", "loop", "dir-named-file"])
        path = {"long-name": work / ("a" * 300 + ".safetensors"), "long-path": work / "/".join(["b" * 200] * 25),
                "nul": work / "a\x00b.safetensors", "missing": work / "nothing.safetensors", "empty-dir": work,
                "loop": work / "loop.safetensors", "dir-named-file": work / "d.safetensors"}[case]
        if case == "loop":
            path.symlink_to(path)
        if case == "dir-named-file":
            path.mkdir()
    tally.files += 1
    tally.attempt("read_metadata", case, lambda: read_metadata(path))
    module = tally.attempt("load_model", case, lambda: weightgen.load_model(path))
    if module is not None and base is not None:
        sd = module.state_dict()
        if not all(t.isfinite().all() for t in sd.values()):
            tally.nonfinite += 1
        original = {k: v for k, v in fix["meta"]["mlp" if base == "old" else base].items() if base != "old" or k != "sha256"}
        changed = not same_weights(sd, fix["bases"][base][1]) or module.weightgen_meta != original
        if changed and checksummed:
            tally.silently(f"checkpoint {case} from {base}")
        elif changed:
            tally.unverifiable += 1
    tally.attempt("cli inspect", case, lambda: cli(["inspect", path]))
    if run_eval:
        tally.attempt("cli eval", case, lambda: cli(["eval", path, "--out", fix["root"] / "report.json"]))
    # zoo import reads the case's folder: a bad file is skipped with a reason, never a crash; the
    # CLI (which also writes the zoo) on every fifth case
    tally.attempt("zoo import", case, lambda: read_source(work))
    if index % 5 == 0:
        out = fix["root"] / "imported"
        shutil.rmtree(out, ignore_errors=True)
        tally.attempt("cli zoo import", case, lambda: cli(["zoo", "import", work, "--out", out, "--quiet"]))


def run_zoo_case(tally: Tally, fix: dict, rng: random.Random, run_info: bool) -> None:
    zoo = fix["root"] / "zoo-case"
    shutil.rmtree(zoo, ignore_errors=True)
    shutil.copytree(fix["zoo"], zoo)
    case = mutate_zoo(rng, zoo, fix)
    tally.files += 1
    store = ZooStore(zoo)
    reference = fix["zoo_models"]

    def check(model_id, sd) -> None:
        if not all(t.isfinite().all() for t in sd.values()):
            tally.nonfinite += 1
        if model_id not in reference or not same_weights(sd, reference[model_id]):
            tally.silently(f"zoo {case}: model {model_id}")

    def records():
        store.check_complete()
        return store.records

    def every_model():
        for model_id in rng.sample(sorted(reference), len(reference)):
            check(model_id, store.state_dict(model_id))

    def every_arch():
        for slug in store.archs:
            params, recs = store.load_arch(slug, include_held_out=True)
            for i, r in enumerate(recs):
                check(r["id"], {n: p[i] for n, p in params.items()})

    tally.attempt("zoo records", case, records)
    tally.attempt("zoo state_dict", case, every_model)
    tally.attempt("zoo load_arch", case, every_arch)
    if run_info:
        tally.attempt("cli zoo info", case, lambda: cli(["zoo", "info", zoo]))


def fuzz(fix: dict, files: int, seed: int, progress: bool = True) -> Tally:
    """`files` seeded cases: about two thirds checkpoints, one third zoos."""
    rng, tally = random.Random(seed), Tally()
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        job = bar.add_task("fuzzing", total=files)
        for i in range(files):
            if rng.random() < 0.65:
                run_checkpoint_case(tally, fix, rng, i, run_eval=i % 3 == 0)
            else:
                run_zoo_case(tally, fix, rng, run_info=i % 2 == 0)
            bar.update(job, advance=1)
    return tally


def campaign(files: int, seed: int, root: Path, progress: bool = True, abuse: bool = True) -> dict:
    start = time.perf_counter()
    fix = build_fixtures(root / "fixtures")
    cli(["eval", root / "fixtures" / "mlp.safetensors", "--out", root / "warm.json"])  # loads the data once
    tally = fuzz(fix, files, seed, progress)
    result = {"benchmark": "faults", "seed": seed, **tally.figures()}
    result["code_executions"] = int(fix["marker"].exists())
    result["repeatable"] = repeatability(root / "repeat")
    if abuse:
        result["cli_abuse"] = cli_abuse(fix, root / "abuse", progress)
        result["code_executions"] = int(fix["marker"].exists())
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="fuzzed files and zoo cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-abuse", action="store_true", help="skip the CLI subprocess cases (d)")
    parser.add_argument("--kills", type=int, default=8, help="(b) interrupted runs per job in bench_kills' campaign "
                        "(zoo build, encoder, generator training); 0 skips it")
    parser.add_argument("--memory-limit-gb", type=float, default=8.0,
                        help="address-space cap for this process, so a reader that allocates without bound fails here "
                             "instead of taking the machine (0: none)")
    parser.add_argument("--save-same", help=argparse.SUPPRESS)  # the child of the repeatability check
    args = parser.parse_args()
    if args.save_same:
        save_same(args.save_same)
        return
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    with tempfile.TemporaryDirectory(prefix="weightgen-faults-") as tmp:
        result = campaign(args.files, args.seed, Path(tmp), abuse=not args.no_abuse)
        if args.kills:  # (b): kill -9 and resume; its own subprocesses, so outside the memory cap's concern
            import random

            import bench_kills

            jobs = bench_kills.jobs(Path(tmp) / "kills")
            (Path(tmp) / "kills").mkdir()
            runs = {name: bench_kills.campaign(name, job, Path(tmp) / "kills", args.kills, random.Random(args.seed))
                    for name, job in jobs.items()}
            result["kills"] = {k: sum(r[k] for r in runs.values()) for k in ("kills", "kills_mid_work", "resumes", "identical")}
            result["kills"]["runs"], result["kills"]["jobs"] = args.kills * len(runs), runs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
