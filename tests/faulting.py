"""What the fault tests share (tests/test_faults.py, test_faults_cli.py): the fault benchmark's modules,
a small checkpoint, header edits, and the CLI's real entry point run in-process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import weightgen
from weightgen.cli import main
from weightgen.specs import ArchSpec

ROOT = Path(__file__).resolve().parents[1]
ARCH = ArchSpec("mlp", (64, 8, 3), "gelu")


def load_bench():
    if "bench_faults" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_faults", ROOT / "benchmarks" / "bench_faults.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_faults"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_faults"]


def bench_part(name: str):
    """faults_files or faults_cli, the modules bench_faults is split into (importing it loads them)."""
    load_bench()
    return sys.modules[name]


def checkpoint(tmp_path: Path, name: str = "m.safetensors") -> Path:
    g = torch.Generator().manual_seed(0)
    sd = {n: torch.randn(s, generator=g) for n, s in zip(ARCH.layout().names, ARCH.layout().shapes)}
    return weightgen.save_model(sd, tmp_path / name, arch=ARCH, task="digits-subset-3-5-8", seed=1)


def edit_header(path: Path, edit, out: Path | None = None) -> Path:
    """Rewrite a safetensors file's JSON header with `edit(header)`, keeping its data bytes."""
    bench = bench_part("faults_files")
    header, body = bench.split(path.read_bytes())
    edit(header)
    out = out or path
    out.write_bytes(bench.join(header, body))
    return out


def run_main(argv: list, capsys) -> tuple[int, str, str]:
    """`weightgen ARGV` through the real entry point, in-process: (exit status, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["weightgen", *map(str, argv)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], lines[0]


def set_meta(key: str, value: str):
    """A header edit that sets one metadata key (and drops the checksum)."""
    def edit(header):
        header["__metadata__"][key] = value
        header["__metadata__"].pop("sha256", None)  # as an unchecksummed file, so only the new checks can refuse
    return edit
