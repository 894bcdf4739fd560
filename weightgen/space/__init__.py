"""Weight space: the bridge between state_dicts and tensors a model can learn."""
