"""Train the weight autoencoder (weight tokens -> continuous latents) on a zoo's non-held-out models.

    python train/train_autoencoder.py configs/encoder/autoencoder-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_autoencoder.py CONFIG

The training code lives in weightgen/train/autoencoder.py (its config, AutoencoderConfig, in
weightgen/encoders/training.py), so the package runs it without importing this script.
"""

import sys

from weightgen.train.autoencoder import AutoencoderConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, AutoencoderConfig, sys.argv[1:])
