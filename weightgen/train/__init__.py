"""The training entry points: one `main(cfg)` per trainable component (`autoencoder`, `tokenizer`,
`diffusion`, `autoregressive`, `set_diffusion`, `set_ar`), each with its config dataclass. The
scripts in `train/` are thin wrappers over them, so quickstart, benchmarks and tests import the
package, never a script."""
