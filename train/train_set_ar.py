"""Train the autoregressive generator over neuron sets (one model for every MLP width) on a zoo's

    python train/train_set_ar.py configs/generator/set-ar-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_set_ar.py CONFIG

The training code and its config (SetARConfig) live in weightgen/train/set_ar.py, so the package
(quickstart, benchmarks, tests) runs it without importing this script.
"""

import sys

from weightgen.train.set_ar import SetARConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, SetARConfig, sys.argv[1:])
