"""The neuron-set diffusion generator end to end: `weightgen sample` of an architecture the debug zoo
never had, `weightgen parse` saying seen / new, and what cannot be expressed refused in one sentence."""

from __future__ import annotations

import json

from weightgen.checkpoint import load_model, read_metadata
from weightgen.generators.set_diffusion import SetDiffusionPipeline
from weightgen.specs import ArchSpec


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_cli_samples_an_unseen_architecture(debug_set_generator, run_cli, tmp_path):
    assert ArchSpec.parse("MLP 64-24-12-3") not in SetDiffusionPipeline.from_pretrained(debug_set_generator).archs
    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", "classify digits 3, 5 and 8 with an MLP 64-24-12-3", "--generator",
                                debug_set_generator, "-n", "3", "--seed", "1", "--out", out, "--json", timeout=300)
    assert code == 0, err
    result = _last_json(stdout)
    assert result["arch"] == "MLP 64-24-12-3, ReLU" and result["num_finite"] == 3
    assert any("is new" in n for n in result["notes"])  # new arch, and its depth was never in the zoo
    assert len(result["report"]["generated"]["acc"]) == 3
    for path in result["files"]:
        model = load_model(path)
        assert [m.weight.shape[0] for m in model.layers] == [24, 12, 3]
        assert read_metadata(path)["task"]["id"] == "digits-subset-3-5-8"


def test_parse_says_seen_or_new(debug_set_generator, run_cli):
    code, stdout, err = run_cli("parse", "classify digits 3, 5 and 8 with an MLP 64-16-3", "--generator",
                                debug_set_generator)
    assert code == 0, err
    assert "seen" in stdout
    code, stdout, err = run_cli("parse", "classify digits 3, 5 and 8 with an MLP 64-40-3", "--generator",
                                debug_set_generator)
    assert code == 0, err
    assert "new" in stdout and "outside the zoo" in stdout  # 40 is wider than the debug zoo's 16


def test_inexpressible_archs_are_refused_in_one_sentence(debug_set_generator, run_cli, tmp_path):
    for prompt, why in (("classify digits 3, 5 and 8 with a CNN 8-3", "only MLPs"),
                        ("classify digits 3, 5 and 8 with an MLP 64-3", "no hidden layer")):
        code, stdout, err = run_cli("sample", prompt, "--generator", debug_set_generator, "--out", tmp_path / "x",
                                    timeout=300)
        assert code == 2 and why in err and "Traceback" not in err, err


def test_a_generator_saved_in_the_old_format_is_refused_with_the_reason(debug_set_generator, run_cli, tmp_path):
    import shutil

    import pytest

    from weightgen.errors import GeneratorError

    old = tmp_path / "old"
    shutil.copytree(debug_set_generator, old)
    assert json.loads((old / "weightgen.json").read_text()) == {"format": "weightgen-generator/2"}
    (old / "weightgen.json").unlink()  # as every folder saved before the format existed
    with pytest.raises(GeneratorError, match="format weightgen-generator/1.*train it again"):
        SetDiffusionPipeline.from_pretrained(old)
    code, _, err = run_cli("sample", "classify digits 3, 5 and 8", "--generator", old, "--out", tmp_path / "x")
    assert code == 2 and "weightgen-generator/2" in err and "Traceback" not in err, err


def test_one_trained_generator_serves_three_widths_it_was_not_built_for(debug_set_generator):
    import torch

    from weightgen.space.neurons import neuron_layout

    pipe = SetDiffusionPipeline.from_pretrained(debug_set_generator)
    assert {a.sizes[1:-1] for a in pipe.archs} == {(16,)}  # the debug zoo's only MLP width
    for text in ("MLP 64-20-3", "MLP 64-48-3", "MLP 64-48-24-3"):
        arch = ArchSpec.parse(text)
        out = pipe("classify digits 3, 5 and 8", arch=arch, num_samples=2, generator=0, num_inference_steps=2)
        assert out.arch == arch and out.flat.shape == (2, arch.layout().numel) and out.finite.all()
        # the same weights through the neuron-set view and back, then into plain PyTorch
        layout = neuron_layout(arch)
        assert torch.equal(layout.join(*layout.split(out.flat)), out.flat)
        module = arch.build()
        module.load_state_dict(out.state_dicts[0])
        assert module(torch.zeros(1, 64)).shape == (1, 3)
