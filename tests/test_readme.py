"""Every Python snippet in the README runs as written (STYLE.md rule 10)."""

from __future__ import annotations

import re


def test_readme_python_snippets_run(repo_root, tmp_path, monkeypatch):
    snippets = re.findall(r"```python\n(.*?)```", (repo_root / "README.md").read_text(), flags=re.DOTALL)
    assert snippets, "the README has no python snippet"
    monkeypatch.chdir(tmp_path)  # snippets write files such as net.safetensors
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md snippet {i}", "exec"), {"__name__": f"readme_snippet_{i}"})
