"""Train the text-conditioned latent diffusion generator on a zoo's non-held-out models.

    python train/train_diffusion.py configs/generator/diffusion-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_diffusion.py CONFIG

The training code and its config (DiffusionConfig) live in weightgen/train/diffusion.py, so the package
(quickstart, benchmarks, tests) runs it without importing this script.
"""

import sys

from weightgen.train.diffusion import DiffusionConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, DiffusionConfig, sys.argv[1:])
