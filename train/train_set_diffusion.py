"""Train the neuron-set diffusion generator (one model for every MLP width) on a zoo's non-held-out models.

    python train/train_set_diffusion.py configs/generator/set-diffusion-widths.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_set_diffusion.py CONFIG

The training code and its config (SetDiffusionConfig) live in weightgen/train/set_diffusion.py, so the package
(quickstart, benchmarks, tests) runs it without importing this script.
"""

import sys

from weightgen.train.set_diffusion import SetDiffusionConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, SetDiffusionConfig, sys.argv[1:])
