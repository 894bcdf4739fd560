"""Sample many prompts in one run: a YAML list of prompts, split across processes by accelerate.

    python sample/sample.py configs/sample/digits.yaml [--set num_samples=16 --set generator=DIR ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 sample/sample.py configs/sample/digits.yaml

Each prompt gets OUT/NNN-<prompt>/, exactly what `weightgen sample PROMPT --out ...` writes there
(the same library call, `weightgen.sampling.sample_prompt`, with the same seed for every prompt, so
the files do not depend on how many processes ran). OUT/index.json lists prompt, folder and summary.
Every prompt and option is checked before the generator loads.
"""

from __future__ import annotations

import json
import sys

from weightgen.sampling import SampleConfig, folder_name, optional, sample_prompt


def main(cfg: SampleConfig) -> None:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from weightgen import atomic
    from weightgen.cli_checks import check_text
    from weightgen.errors import ConfigError
    from weightgen.generate import check_writable
    from weightgen.home import load_generator
    from weightgen.sampling import check_sampling_args

    steps, guidance, temperature = optional(cfg.steps, 0), optional(cfg.guidance, -1.0), optional(cfg.temperature, -1.0)
    if not cfg.prompts:
        raise ConfigError("prompts is empty; list the prompts to sample under `prompts:`")
    for prompt in cfg.prompts:
        check_text("a prompt", prompt)
    check_sampling_args(cfg.num_samples, cfg.seed, steps, guidance, temperature)
    out = check_writable(cfg.out)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    pipe, kind, path = load_generator(cfg.generator or None, cfg.kind or None)
    pipe.to(state.device)
    rows = []
    with state.split_between_processes(list(enumerate(cfg.prompts))) as mine:
        for i, prompt in mine:
            folder = out / folder_name(i, prompt)
            result = sample_prompt(pipe, kind, path, prompt, folder, num_samples=cfg.num_samples, seed=cfg.seed,
                                   steps=steps, guidance=guidance, temperature=temperature, evaluate=cfg.evaluate)
            rows.append({"index": i, "prompt": prompt, "folder": str(folder), "num_finite": result["num_finite"],
                         "best": result["best"], "task": result.get("task")})
            print(f"[{i + 1}/{len(cfg.prompts)}] {prompt}: {result['num_finite']} written to {folder}", flush=True)
    atomic.write_text(out / f".index-{state.process_index}.json", json.dumps(rows))
    state.wait_for_everyone()
    if state.is_main_process:  # one index, in prompt order, from every process's part
        parts = [out / f".index-{r}.json" for r in range(state.num_processes)]
        merged = sorted((row for p in parts for row in json.loads(p.read_text())), key=lambda r: r["index"])
        atomic.write_text(out / "index.json", json.dumps({"generator": str(path), "prompts": merged}, indent=1))
        for p in parts:
            p.unlink()
        print(f"sampled {len(merged)} prompts into {out}")


if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, SampleConfig, sys.argv[1:])
