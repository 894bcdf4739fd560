"""Generators: learn the encoders' weight space conditioned on task and architecture text."""
