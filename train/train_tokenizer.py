"""Train the VQ-VAE tokenizer (weight tokens -> ids) on a zoo's non-held-out models.

    python train/train_tokenizer.py configs/encoder/vqvae-digits.yaml [--set steps=100 ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train_tokenizer.py CONFIG

The training code lives in weightgen/train/tokenizer.py (its config, TokenizerConfig, in
weightgen/encoders/training.py), so the package runs it without importing this script.
"""

import sys

from weightgen.train.tokenizer import TokenizerConfig, main

if __name__ == "__main__":
    from weightgen.cli import run_script

    run_script(main, TokenizerConfig, sys.argv[1:])
