"""Every Python snippet in the README runs as written (STYLE.md rule 10)."""

from __future__ import annotations

import re


def test_readme_python_snippets_run(repo_root, tmp_path, monkeypatch, debug_lora_generator):
    snippets = re.findall(r"```python\n(.*?)```", (repo_root / "README.md").read_text(), flags=re.DOTALL)
    assert snippets, "the README has no python snippet"
    monkeypatch.chdir(tmp_path)  # snippets write files such as net.safetensors
    # the LoRA snippet loads a generator's base and a sampled adapter from the paths the README uses:
    # the debug LoRA generator, and an adapter it samples, stand in for them
    from weightgen.home import load_generator
    from weightgen.zoo.lora_adapter import save_adapter

    (tmp_path / "runs" / "generators").mkdir(parents=True)
    (tmp_path / "runs" / "generators" / "lora-diffusion-digits").symlink_to(debug_lora_generator)
    pipe, _, _ = load_generator(debug_lora_generator, None)
    out = pipe("digits rotated by 25 degrees", num_samples=1, num_inference_steps=2, generator=0)
    save_adapter(tmp_path / "runs" / "samples" / "digits-rotate-25-lora" / "best", out.adapter(0), out.lora,
                 debug_lora_generator / "base")
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md snippet {i}", "exec"), {"__name__": f"readme_snippet_{i}"})
