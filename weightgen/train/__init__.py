"""The training entry points of every generator: one `main(cfg)` and its config dataclass per module
(`diffusion`, `autoregressive`, `set_diffusion`, `set_ar`). The scripts in `train/` are thin wrappers
over them, so quickstart, benchmarks and tests import the package, never a script."""
