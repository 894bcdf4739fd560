"""The generator pipelines (`WeightDiffusionPipeline`, `WeightARPipeline`) on debug generators trained
in-process (see conftest.py): reading a request, determinism, save/load round trips, decoding every
arch, the AR vocabulary layout, honest non-finite counts, and bad input as one clear error."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from weightgen.errors import ArchError, GeneratorError, TaskError, WeightgenError
from weightgen.generators import autoregressive, diffusion
from weightgen.generators.autoregressive import (
    BOS,
    PAD,
    ArchLayoutProcessor,
    WeightARPipeline,
    WeightARPrefix,
)
from weightgen.generators.common import check_folder, resolve_request
from weightgen.generators.diffusion import WeightDiffusionPipeline
from weightgen.specs import ArchSpec
from weightgen.tasks import parse_prompt, task_code

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models on busy shared cores

PIPELINES = {"diffusion": WeightDiffusionPipeline, "autoregressive": WeightARPipeline}
FAST = {"diffusion": {"num_inference_steps": 3}, "autoregressive": {}}  # per-call sampling options
MLP3, MLP2, CNN3, CNN2 = (ArchSpec.parse(t) for t in ("MLP 64-16-3", "MLP 64-16-2", "CNN 4-3", "CNN 4-2"))
DEBUG_ARCHS = [MLP3, MLP2, CNN3, CNN2]  # configs/zoo/debug.yaml on the 3- and 2-class digits tasks
KINDS = ["digits-subset"]
HELD_OUT = "classify digits 3, 5 and 8"  # the debug zoo's held-out task
PROMPTS = {3: "classify digits 0, 1 and 2", 2: "tell 4s apart from 9s"}  # by number of classes
SMALL = HELD_OUT + " with a CNN 4-3"  # a small arch: AR sampling is one LM step per id, 8 ids per token


@pytest.fixture(scope="module")
def pipes(debug_generators) -> dict:
    return {name: cls.from_pretrained(debug_generators[name]) for name, cls in PIPELINES.items()}


def _sample(pipe, name: str, prompt: str = SMALL, **kwargs):
    return pipe(prompt, **{**FAST[name], **kwargs})


def _codec(pipe):
    """The component that decodes samples to weights."""
    return pipe.encoder if isinstance(pipe, WeightDiffusionPipeline) else pipe.tokenizer


# -- resolve_request ----------------------------------------------------------------------------


def test_arch_named_in_prompt_is_used_and_text_kept_as_is():
    req = resolve_request("  digits 0, 1 and 2 with a CNN 4-3  ", None, DEBUG_ARCHS, KINDS)
    assert req.arch == CNN3
    assert req.task.id == "digits-subset-0-1-2"
    assert req.text == "digits 0, 1 and 2 with a CNN 4-3"  # stripped, no second arch appended
    req = resolve_request("tell 4s apart from 9s using an mlp 64-16-2", None, DEBUG_ARCHS, KINDS)
    assert req.arch == MLP2 and req.task.id == "digits-subset-4-9"
    assert req.text == "tell 4s apart from 9s using an mlp 64-16-2"


@pytest.mark.parametrize("arch", ["CNN 4-3", "CNN 4-3, ReLU", CNN3])
def test_arch_argument_as_text_or_spec_is_appended_to_conditioning_text(arch):
    req = resolve_request("digits 0, 1 and 2", arch, DEBUG_ARCHS, KINDS)
    assert req.arch == CNN3 and isinstance(req.arch, ArchSpec)
    assert req.text == "digits 0, 1 and 2 with a CNN 4-3, ReLU"
    req = resolve_request("digits 0, 1 and 2", "MLP 64-16-3", DEBUG_ARCHS, KINDS)
    assert req.text == "digits 0, 1 and 2 with an MLP 64-16-3, ReLU"  # "an" before MLP


def test_default_arch_when_prompt_names_none():
    # the task's own default (MLP 64-32-3) was not trained, so the first trained arch that fits
    req = resolve_request("digits 0, 1 and 2", None, DEBUG_ARCHS, KINDS)
    assert req.arch == MLP3 and req.text == "digits 0, 1 and 2 with an MLP 64-16-3, ReLU"
    assert resolve_request("tell 4s apart from 9s", None, DEBUG_ARCHS, KINDS).arch == MLP2
    assert resolve_request("tell 4s apart from 9s", None, [CNN3, CNN2], KINDS).arch == CNN2
    # the task's default is preferred when the generator knows it
    default = ArchSpec.parse("MLP 64-32-3")
    assert resolve_request("digits 0, 1 and 2", None, [CNN3, default], KINDS).arch == default


def test_prompt_without_known_task_but_with_arch_generates_without_task():
    req = resolve_request("some weights", "CNN 4-3", DEBUG_ARCHS, KINDS)
    assert req.task is None and req.arch == CNN3
    assert req.text == "some weights with a CNN 4-3, ReLU"
    req = resolve_request("weights with a CNN 4-2", None, DEBUG_ARCHS, KINDS)
    assert req.task is None and req.arch == CNN2 and req.text == "weights with a CNN 4-2"


def test_task_kinds_none_accepts_any_kind_but_still_checks_the_arch():
    iris = ArchSpec.parse("MLP 4-16-3")
    req = resolve_request("classify iris flowers", None, [MLP3, iris], None)
    assert req.task.id == "iris" and req.arch == iris  # the trained arch that fits the task
    with pytest.raises(TaskError, match="digits-subset tasks only"):
        resolve_request("classify iris flowers", None, [MLP3, iris], KINDS)
    with pytest.raises(ArchError, match="needs 4 inputs and 3 outputs"):
        resolve_request("classify iris flowers", MLP3, [MLP3, iris], None)


BAD_REQUESTS = [
    # (prompt, arch, error class, substrings of the message)
    (HELD_OUT, "MLP 64-99-3", ArchError, ["cannot produce an MLP 64-99-3", "MLP 64-16-3", "CNN 4-2"]),
    (HELD_OUT + " with an MLP 64-99-3", None, ArchError, ["cannot produce an MLP 64-99-3", "MLP 64-16-3"]),
    (HELD_OUT, "MLP 64-16-3, GELU", ArchError, ["cannot produce an MLP 64-16-3, GELU", "MLP 64-16-3, ReLU"]),
    ("classify iris flowers", None, TaskError, ["digits-subset tasks only", "'iris'"]),
    ("classify wine cultivars", "MLP 64-16-3", TaskError, ["digits-subset tasks only", "'wine'"]),
    (HELD_OUT, "MLP 64-16-2", ArchError, ["digits-subset-3-5-8", "3 outputs", "MLP 64-16-2"]),
    (HELD_OUT + " with a CNN 4-2", None, ArchError, ["digits-subset-3-5-8", "3 outputs", "CNN 4-2"]),
    ("classify all ten digits", None, ArchError, ["cannot produce an MLP 64-32-10", "MLP 64-16-3"]),
    ("", None, TaskError, ["prompt is empty"]),
    ("   \n ", "MLP 64-16-3", TaskError, ["prompt is empty"]),
    (None, None, TaskError, ["prompt is empty"]),
    ("make something nice", None, TaskError, ["no task", "no architecture", "an MLP 64-16-3, ReLU"]),
    (HELD_OUT, "a very deep net", ArchError, ["unknown architecture 'a very deep net'"]),
]


@pytest.mark.parametrize(("prompt", "arch", "error", "words"), BAD_REQUESTS)
def test_bad_request_is_one_clear_error(prompt, arch, error, words):
    with pytest.raises(error) as info:
        resolve_request(prompt, arch, DEBUG_ARCHS, KINDS)
    message = str(info.value)
    assert isinstance(info.value, WeightgenError) and "\n" not in message
    for word in words:
        assert word in message, message


def test_arch_argument_that_contradicts_the_prompt_is_refused_or_described():
    prompt = "digits 0, 1 and 2 with an MLP 64-16-3"
    try:
        req = resolve_request(prompt, "CNN 4-3", DEBUG_ARCHS, KINDS)
    except WeightgenError as e:  # refusing the contradiction is one correct answer
        assert "CNN 4-3" in str(e) and "MLP 64-16-3" in str(e)
        return
    assert req.arch == CNN3
    assert "CNN 4-3" in req.text and "MLP 64-16-3" not in req.text, req.text  # describe what is generated


# -- the AR vocabulary layout -----------------------------------------------------------------


def _prefix(n_archs: int = 3, ids_per_token: int = 4, codebook_size: int = 5) -> WeightARPrefix:
    return WeightARPrefix(text_dim=8, hidden_size=8, prefix_len=2, n_archs=n_archs, ids_per_token=ids_per_token,
                          codebook_size=codebook_size)


@pytest.mark.parametrize("arch_index", [0, 2])
def test_prefix_to_sequence_and_to_ids_round_trip(arch_index):
    prefix = _prefix()
    assert prefix.code_offset == 5 and prefix.vocab_size == 5 + 4 * 5
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, (3, 6, 4), generator=g)
    ids[0] = 0  # both ends of the codebook
    ids[1] = 4
    seq = prefix.to_sequence(ids, arch_index)
    assert seq.shape == (3, 2 + 6 * 4) and seq.dtype == torch.long
    assert (seq[:, 0] == BOS).all() and (seq[:, 1] == 2 + arch_index).all()
    assert PAD < BOS < 2 + arch_index < prefix.code_offset  # special and arch tokens never collide with codes
    codes = seq[:, 2:].reshape(3, 6, 4)
    for slot in range(4):  # id slot j of every token lives in its own block of the vocabulary
        low = prefix.code_offset + slot * 5
        assert ((codes[..., slot] >= low) & (codes[..., slot] < low + 5)).all()
    assert torch.equal(prefix.to_ids(seq[:, 2:]), ids)  # a non-contiguous slice, as the pipeline passes


def test_arch_layout_processor_allows_only_the_current_slots_block():
    prefix = _prefix()
    processor = ArchLayoutProcessor(prefix, generated_start=3)
    g = torch.Generator().manual_seed(1)
    for length in range(3, 3 + 9):
        scores = torch.randn(2, prefix.vocab_size, generator=g) * 10
        scores[:, 0] = 1e4  # the model strongly prefers a token it may not emit
        out = processor(torch.zeros(2, length, dtype=torch.long), scores.clone())
        low = prefix.code_offset + ((length - 3) % 4) * 5
        allowed = torch.zeros(prefix.vocab_size, dtype=torch.bool)
        allowed[low : low + 5] = True
        assert torch.equal(out[:, allowed], scores[:, allowed])  # allowed scores untouched
        assert torch.isneginf(out[:, ~allowed]).all()
        drawn = torch.multinomial(out.softmax(-1), 200, replacement=True, generator=g)
        assert ((drawn >= low) & (drawn < low + 5)).all()


# -- pipelines: determinism and save/load -----------------------------------------------------


def test_pipelines_know_the_debug_zoo_archs_and_task_kinds(pipes, debug_zoo):
    for pipe in pipes.values():
        assert sorted(a.slug for a in pipe.archs) == sorted(debug_zoo.archs)
    assert list(pipes["diffusion"].denoiser.config.task_kinds) == KINDS
    assert list(pipes["autoregressive"].prefix.config.task_kinds) == KINDS


@pytest.mark.parametrize("name", PIPELINES)
def test_same_seed_gives_identical_samples_and_different_seeds_differ(name, pipes):
    pipe = pipes[name]
    torch.manual_seed(1)
    a = _sample(pipe, name, num_samples=3, generator=0)
    torch.manual_seed(2)  # the global RNG plays no part
    b = _sample(pipe, name, num_samples=3, generator=0)
    c = _sample(pipe, name, num_samples=3, generator=torch.Generator().manual_seed(0))
    d = _sample(pipe, name, num_samples=3, generator=1)
    assert a.flat.shape == (3, CNN3.layout().numel)
    assert torch.equal(a.flat, b.flat) and torch.equal(a.flat, c.flat)
    for i in range(3):
        assert not torch.equal(a.flat[i], d.flat[i])
    assert not torch.equal(a.flat[0], a.flat[1])  # samples of one call differ too


@pytest.mark.parametrize("name", PIPELINES)
def test_sampling_leaves_the_global_rng_alone(name, pipes):
    state = torch.get_rng_state()
    _sample(pipes[name], name, num_samples=2, generator=5)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", PIPELINES)
def test_save_pretrained_from_pretrained_round_trip_gives_identical_samples(name, pipes, tmp_path):
    pipe = pipes[name]
    pipe.save_pretrained(str(tmp_path / "copy"))
    loaded = PIPELINES[name].from_pretrained(tmp_path / "copy")
    assert loaded is not pipe
    for component in ("denoiser", "encoder") if name == "diffusion" else ("lm", "prefix", "tokenizer"):
        ours, theirs = getattr(pipe, component).state_dict(), getattr(loaded, component).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), component
    for prompt, arch in [(SMALL, None), (PROMPTS[2], CNN2)]:
        a = _sample(pipe, name, prompt, arch=arch, num_samples=3, generator=7)
        b = _sample(loaded, name, prompt, arch=arch, num_samples=3, generator=7)
        assert torch.equal(a.flat, b.flat)


def test_diffusion_samples_do_not_depend_on_batch_size(pipes):
    pipe = pipes["diffusion"]
    whole = _sample(pipe, "diffusion", num_samples=3, generator=0, batch_size=3)
    split = _sample(pipe, "diffusion", num_samples=3, generator=0, batch_size=2)
    torch.testing.assert_close(split.flat, whole.flat, rtol=1e-5, atol=1e-5)


def test_diffusion_guidance_zero_ignores_the_prompt_text(pipes):
    # guidance 0 = the denoiser's unconditional branch: two wordings of one task give the same samples
    # (the task's mean, from its structure, applies at every guidance), different tasks do not
    pipe = pipes["diffusion"]
    other = "recognise handwritten zeros, ones and twos"
    a = _sample(pipe, "diffusion", PROMPTS[3], num_samples=2, generator=0, guidance_scale=0.0)
    b = _sample(pipe, "diffusion", other, num_samples=2, generator=0, guidance_scale=0.0)
    assert torch.equal(a.flat, b.flat)
    assert not torch.equal(a.flat, _sample(pipe, "diffusion", HELD_OUT, num_samples=2, generator=0,
                                           guidance_scale=0.0).flat)
    conditional = [_sample(pipe, "diffusion", p, num_samples=2, generator=0, guidance_scale=2.0) for p in (PROMPTS[3], other)]
    assert not torch.equal(conditional[0].flat, conditional[1].flat)


def test_trained_denoiser_keeps_offsets_of_seen_tasks_only(pipes):
    dit = pipes["diffusion"].denoiser
    index = pipes["diffusion"].encoder.stats.index[MLP3.slug]
    known = dit.task_mean.seen_codes[index]
    rows = known.isfinite().all(1)
    assert rows.sum() == 3  # configs/zoo/debug.yaml: 3 seen 3-class subsets (3-5-8 is held out)
    assert not (known == task_code(parse_prompt(HELD_OUT))).all(1).any()
    # (their size is the shrunk random effect: tests/test_dit.py; with 3 tasks x 2 short-trained
    # seeds here the ridge mean already explains them, so they may be shrunk to 0)
    assert dit.task_mean.seen_offset.isfinite().all()


def test_diffusion_temperature_zero_is_one_network_per_task(pipes):
    pipe = pipes["diffusion"]
    cold = _sample(pipe, "diffusion", PROMPTS[3], num_samples=3, generator=0, temperature=0.0)
    # equal up to float rounding (rows of one batch may take different kernel paths), whatever the seed
    torch.testing.assert_close(cold.flat[0], cold.flat[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(_sample(pipe, "diffusion", PROMPTS[3], num_samples=3, generator=5,
                                       temperature=0.0).flat, cold.flat, rtol=0, atol=1e-6)
    warm = _sample(pipe, "diffusion", PROMPTS[3], num_samples=3, generator=0, temperature=0.5)
    assert not torch.equal(warm.flat[0], warm.flat[2])


def test_ar_greedy_decoding_ignores_the_seed_and_matches_top_k_1(pipes):
    pipe = pipes["autoregressive"]
    greedy = pipe(SMALL, num_samples=2, temperature=0.0, generator=0)
    assert torch.equal(greedy.flat[0], greedy.flat[1])
    assert torch.equal(pipe(SMALL, num_samples=2, temperature=0.0, generator=9).flat, greedy.flat)
    assert torch.equal(pipe(SMALL, num_samples=2, top_k=1, generator=3).flat, greedy.flat)


@pytest.mark.parametrize("name", PIPELINES)
def test_result_reports_task_arch_and_conditioning_text(name, pipes):
    pipe = pipes[name]
    out = _sample(pipe, name, HELD_OUT, num_samples=1, generator=0)
    assert out.task.id == "digits-subset-3-5-8" and out.arch == MLP3
    assert out.prompt == "classify digits 3, 5 and 8 with an MLP 64-16-3, ReLU"
    out = _sample(pipe, name, "tell 4s apart from 9s with a CNN 4-2", num_samples=1, generator=0)
    assert out.task.id == "digits-subset-4-9" and out.arch == CNN2
    assert out.prompt == "tell 4s apart from 9s with a CNN 4-2"
    out = _sample(pipe, name, "some weights", arch="CNN 4-3", num_samples=1, generator=0)
    assert out.task is None and out.arch == CNN3 and out.flat.shape == (1, CNN3.layout().numel)


# -- decoding -------------------------------------------------------------------------------------


def _assert_loadable(out, arch: ArchSpec, n: int) -> None:
    assert out.arch == arch and out.flat.shape == (n, arch.layout().numel)
    assert out.finite.shape == (n,) and out.finite.all() and out.num_finite == n
    state_dicts = out.state_dicts
    assert len(state_dicts) == n
    x = torch.randn(5, arch.in_dim)
    for sd in state_dicts:
        module = arch.build()
        module.load_state_dict(sd, strict=True)
        assert module(x).shape == (5, arch.out_dim)
    assert torch.equal(arch.layout().flatten(state_dicts[-1]), out.flat[-1])


def test_every_ar_sample_decodes_for_every_arch(pipes, debug_zoo, monkeypatch):
    """At a high temperature the LM's preferences hardly matter: only the LogitsProcessor keeps every
    id inside its slot's block, and so inside [0, codebook_size)."""
    pipe = pipes["autoregressive"]
    tokenizer, decode, seen = pipe.tokenizer, pipe.tokenizer.decode, []

    def spy(ids, arch, codes=None):
        seen.append(ids.clone())
        return decode(ids, arch, codes)

    monkeypatch.setattr(tokenizer, "decode", spy)
    assert len(debug_zoo.archs) == 4
    for arch in debug_zoo.archs.values():
        out = pipe(PROMPTS[arch.out_dim], arch=arch, num_samples=5, batch_size=3, temperature=5.0, generator=3)
        ids = seen[-1]
        assert ids.shape == (5, tokenizer.stats.layout(arch).num_tokens, tokenizer.ids_per_token)
        assert ids.min() >= 0 and ids.max() < tokenizer.codebook_size, arch.describe()
        _assert_loadable(out, arch, 5)
    assert len(seen[-1].unique()) > tokenizer.codebook_size // 4  # near-uniform draws explore the codebook


def test_every_diffusion_sample_decodes_for_every_arch(pipes, debug_zoo):
    pipe = pipes["diffusion"]
    for arch in debug_zoo.archs.values():
        _assert_loadable(_sample(pipe, "diffusion", PROMPTS[arch.out_dim], arch=arch, num_samples=2, generator=0),
                         arch, 2)


@pytest.mark.parametrize("name", PIPELINES)
def test_non_finite_samples_are_flagged_and_counted_not_dropped(name, pipes, monkeypatch):
    codec = _codec(pipes[name])
    decode = codec.decode

    def broken(codes, arch, *task_codes):  # the VQ tokenizer also takes task codes
        flat = decode(codes, arch, *task_codes).clone()
        flat[1, 0] = math.nan
        flat[2, -1] = math.inf
        return flat

    monkeypatch.setattr(codec, "decode", broken)
    out = _sample(pipes[name], name, num_samples=4, generator=0)
    assert out.flat.shape == (4, CNN3.layout().numel)  # nothing dropped
    assert out.finite.tolist() == [True, False, False, True]
    assert out.num_finite == 2
    state_dicts = out.state_dicts
    assert len(state_dicts) == 4 and math.isnan(state_dicts[1][CNN3.layout().names[0]].flatten()[0])


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize(("prompt", "arch", "error", "words"), BAD_REQUESTS)
def test_pipeline_refuses_bad_request(name, pipes, prompt, arch, error, words):
    with pytest.raises(error) as info:
        _sample(pipes[name], name, prompt, arch=arch, generator=0)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


BAD_ARGUMENTS = {
    "diffusion": [("guidance_scale", -1), ("guidance_scale", 21), ("guidance_scale", math.nan),
                  ("num_inference_steps", 0), ("num_inference_steps", 1001), ("num_inference_steps", 2.5),
                  ("num_samples", 0), ("num_samples", -3), ("num_samples", True), ("temperature", -0.1),
                  ("temperature", 2.5)],
    "autoregressive": [("temperature", -1), ("temperature", 11), ("top_k", -1), ("top_k", 257), ("top_k", 1.5),
                       ("top_p", 0), ("top_p", 1.5), ("num_samples", 0), ("num_samples", 2.0)],
}


@pytest.mark.parametrize(("name", "arg", "value"), [(n, a, v) for n, cases in BAD_ARGUMENTS.items() for a, v in cases])
def test_argument_out_of_range_is_one_clear_error(name, arg, value, pipes):
    with pytest.raises(GeneratorError) as info:
        _sample(pipes[name], name, **{arg: value})
    message = str(info.value)
    assert message.startswith(f"{arg} must be") and repr(value) in message and "\n" not in message


@pytest.mark.parametrize("name", PIPELINES)
def test_missing_generator_folder_is_clear_error(name, tmp_path):
    for path in (tmp_path / "nowhere", tmp_path / "a-file"):
        if path.name == "a-file":
            path.write_text("not a generator")
        with pytest.raises(GeneratorError) as info:
            PIPELINES[name].from_pretrained(path)
        assert f"no generator at {path}" in str(info.value)
        assert f"train/train_{name}.py" in str(info.value)


INCOMPLETE = [
    ("diffusion", "model_index.json"),
    ("diffusion", "denoiser/diffusion_pytorch_model.safetensors"),
    ("diffusion", "encoder/config.json"),
    ("diffusion", "scheduler/scheduler_config.json"),
    ("autoregressive", "model_index.json"),
    ("autoregressive", "lm/model.safetensors"),
    ("autoregressive", "prefix/config.json"),
    ("autoregressive", "tokenizer/diffusion_pytorch_model.safetensors"),
]


@pytest.mark.parametrize(("name", "missing"), INCOMPLETE)
def test_incomplete_generator_folder_is_clear_error(name, missing, debug_generators, tmp_path):
    copy = tmp_path / name
    shutil.copytree(debug_generators[name], copy, ignore=shutil.ignore_patterns("checkpoints"))
    module = diffusion if name == "diffusion" else autoregressive
    assert check_folder(copy, module.FILES, "") == copy  # complete before the deletion
    (copy / missing).unlink()
    with pytest.raises(GeneratorError) as info:
        PIPELINES[name].from_pretrained(copy)
    message = str(info.value)
    assert "incomplete" in message and f"missing {missing})" in message and "\n" not in message
