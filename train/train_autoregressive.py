"""Train the autoregressive generator (a GPT-2 over VQ ids) on a zoo's non-held-out models.

    python train/train_autoregressive.py configs/generator/ar-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_autoregressive.py CONFIG

The training code and its config (ARConfig) live in weightgen/train/autoregressive.py, so the package
(quickstart, benchmarks, tests) runs it without importing this script.
"""

import sys

from weightgen.train.autoregressive import ARConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, ARConfig, sys.argv[1:])
