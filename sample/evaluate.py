"""Score a folder of checkpoints: what `weightgen eval` does, as a config-driven script.

    python sample/evaluate.py configs/sample/evaluate.yaml [--set paths=[runs/samples/batch] --set zoo=DIR ...]

Every checkpoint (files, hub-style folders, or folders of them, searched one level deep) is scored
on its task (`task`, else its own metadata), grouped by (task, arch) into batched evaluations, with
`zoo` statistics and novelty when a zoo is given; the report goes to `out` as JSON, the same
library call as `weightgen eval` (`weightgen.generate.evaluate_paths`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from weightgen.sampling import ScoreConfig


def main(cfg: ScoreConfig) -> None:
    from weightgen import atomic
    from weightgen.cli_checks import check_path, check_report_path, check_text
    from weightgen.errors import ConfigError
    from weightgen.generate import checkpoint_files, evaluate_paths

    if not cfg.paths:
        raise ConfigError("paths is empty; list checkpoint files or folders under `paths:`")
    check_text("task", cfg.task or None)
    paths = [check_path(Path(p)) for p in cfg.paths]
    # a batch folder from sample/sample.py holds one folder per prompt: score what is inside them
    expanded = [sub for p in paths for sub in (sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
                                               if p.is_dir() and (p / "index.json").is_file() else [p])]
    out = check_report_path(Path(cfg.out))
    report = evaluate_paths(checkpoint_files(expanded), cfg.task or None, cfg.zoo or None, cfg.baselines)
    atomic.write_text(out, json.dumps(report, indent=1, allow_nan=False))
    for c in report["checkpoints"]:
        print(f"{c['path']}: {c['task']} {c['arch']} accuracy {c['acc']:.4f}")
    print(f"scored {len(report['checkpoints'])} checkpoints; report: {out}")


if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, ScoreConfig, sys.argv[1:])
