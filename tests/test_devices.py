"""Every tensor follows the model's device: the train scripts, sampling, the null prompt, the EMA and
the zoo trainers run on a stand-in GPU, and any op that mixes a host tensor with a device tensor fails,
as it would on CUDA.

There is no GPU here, so the device is simulated. `OnDevice` is an ordinary CPU tensor that says it
lives on cuda:0 (its `.device`); `DeviceCheck`, a TorchDispatchMode, runs every op on the CPU data,
marks what an op makes from device tensors (or with `device=cuda:0`) as on the device, and raises when
an op takes a host tensor together with a device tensor, except where CUDA accepts that too: a 0-dim
host scalar, a copy between devices, host index tensors. So a tensor made with a literal
(`torch.zeros(n)`) and combined with model tensors is caught; so are a host `torch.Generator` drawing
device noise and `.numpy()` of a device tensor. (Autocast of the wrong device type is a spy's job:
`test_zoo_bf16_autocasts_the_device_the_batch_is_on`.)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from weightgen.config import load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[1]
GPU = torch.device("cuda", 0)
aten = torch.ops.aten
COPIES = {aten.copy_.default, aten._to_copy.default}  # CUDA copies between devices
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_inside = threading.local()  # how deep we are in torch calls that were given device tensors


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if isinstance(t, OnDevice) else t


class OnDevice(torch.Tensor):
    """A CPU tensor that lives on the stand-in GPU: its `.device` says cuda:0, `.cpu()` leaves it."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def device(self) -> torch.device:
        return GPU

    @property
    def is_cpu(self) -> bool:
        return False

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {GPU} device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, memory_format=torch.preserve_format) -> torch.Tensor:
        return _host(self).clone(memory_format=memory_format)

    def to(self, *args, **kwargs):
        other = args[0] if args else kwargs.get("other")
        if isinstance(other, torch.Tensor):  # C++ would read other's host device
            return self.to(other.device, other.dtype, *args[1:], **{k: v for k, v in kwargs.items() if k != "other"})
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **{k: v for k, v in kwargs.items() if k != "copy"})
        if device is not None and device.type == "cpu":
            return _host(self).to(dtype=dtype or self.dtype, copy=True)
        if device in (None, GPU) and dtype in (None, self.dtype) and not kwargs.get("copy"):
            return self
        return super().to(*args, **kwargs)

    def type_as(self, other: torch.Tensor) -> torch.Tensor:
        return self.to(other.device, other.dtype)

    def __reduce_ex__(self, protocol):  # torch.save writes the host copy, as for a CUDA tensor
        return _host(self).__reduce_ex__(protocol)

    def __repr__(self, **kwargs) -> str:
        return f"OnDevice({_host(self)!r})"


class FollowDevice(TorchFunctionMode):
    """What C++ would read from the real (host) device: `t.to(other)` and `t.type_as(other)` go to
    other's `.device`; and the tensors a torch call makes inside itself (`one_hot`'s zeros, a
    backward's buffers) follow its device arguments."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if func in (torch.Tensor.to, torch.Tensor.type_as) and isinstance(other, torch.Tensor):
            rest = {k: v for k, v in kwargs.items() if k != "other"}
            return args[0].to(other.device, other.dtype, *args[2:], **rest)
        on_device = any(isinstance(t, OnDevice) for t in tree_leaves((args, kwargs)))
        _inside.depth = getattr(_inside, "depth", 0) + on_device
        try:
            return func(*args, **kwargs)
        finally:
            _inside.depth -= on_device


class DeviceCheck(TorchDispatchMode):
    """Runs every op on the host data; fails on an op that mixes host and device tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on = [t for t in tensors if isinstance(t, OnDevice)]
        device = kwargs.get("device")
        if func is aten._to_copy.default:
            target = torch.device(device) if device is not None else GPU if on else None
        elif device is not None:  # a factory: made on the GPU when asked, or inside a call given device tensors
            target = GPU if torch.device(device) == GPU or getattr(_inside, "depth", 0) else None
        else:
            target = GPU if on else None
            # CUDA indexes a device tensor with host indices (args[1]), but nothing else mixes
            held = tensors if func not in INDEXING or not isinstance(args[0], OnDevice) else tree_leaves(args[2:])
            host = [t for t in held if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) and t.dim() > 0]
            if on and host and func not in COPIES:
                raise AssertionError(f"{func} mixes devices: {[tuple(t.shape) for t in host]} on the host with "
                                     f"{[tuple(t.shape) for t in on]} on {GPU}")
        if target == GPU:
            if "device" in kwargs:
                kwargs["device"] = torch.device("cpu")
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type != GPU.type:
                raise AssertionError(f"{func} draws a tensor on {GPU} from a {generator.device} generator")
        out = func(*args, **kwargs)
        if target != GPU:
            return out
        given = {id(t) for t in tensors}
        return tree_map(lambda t: t.as_subclass(OnDevice) if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice)
                        and id(t) not in given else t, out)

    def __enter__(self):  # torch.tensor(data, device=...) is made on the host first, then moved (as FakeTensorMode does)
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift)
        return super().__exit__(*exc)


@pytest.fixture
def gpu(monkeypatch):
    """The stand-in GPU for one test: `Accelerator.device` is cuda:0, modules move onto it in place
    (so optimisers keep their parameters, as on a real device), and every op is checked."""
    from accelerate import Accelerator

    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)  # nothing real is ever made on CUDA
    # its random numbers are the host's (fork_rng saves and restores a GPU's generator state)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.get_rng_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: None)
    monkeypatch.setattr(Accelerator, "device", property(lambda self: GPU))
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with DeviceCheck(), FollowDevice():
            yield GPU
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


# --- the check itself ------------------------------------------------------------------------------------


def test_the_check_catches_a_literal_tensor_mixed_with_device_tensors(gpu):
    layer = torch.nn.Linear(3, 2).to(gpu)
    x = torch.randn(4, 3)
    with pytest.raises(AssertionError, match="mixes devices"):
        layer(x)
    assert layer(x.to(gpu)).device == gpu
    assert (layer.weight + torch.zeros(3, device=layer.weight.device)[:2, None]).device == gpu
    with pytest.raises(AssertionError, match="mixes devices"):
        layer.weight + torch.zeros(2, 3)
    with pytest.raises(AssertionError, match="generator"):
        torch.randn(3, generator=torch.Generator(), device=gpu)
    with pytest.raises(TypeError, match="numpy"):
        layer.weight.detach().numpy()
    assert type(layer.weight.cpu()) is torch.Tensor and layer.weight[torch.tensor([1])].device == gpu


def test_with_null_prompt_follows_the_null_prompt(gpu):
    """Host prompt tokens, mask and drop rows (as the train scripts batch them) with the model's null
    prompt on the device: the rows come back on the device, the dropped one holding the null prompt."""
    from weightgen.generators.diffusion import with_null_prompt

    null = torch.randn(1, 1, 4).to(gpu).requires_grad_()
    tokens, mask = torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, True, True]])
    text, text_mask = with_null_prompt(tokens, mask, null, torch.tensor([True, False]))
    assert text.device == text_mask.device == gpu
    assert torch.equal(text.cpu()[0], torch.cat([null.detach().cpu()[0], torch.zeros(2, 4)]))
    assert torch.equal(text.cpu()[1], tokens[1]) and text_mask.cpu().tolist() == [[True, False, False], [True] * 3]


# --- the train scripts, a couple of steps each, on the stand-in GPU --------------------------------------


@pytest.mark.parametrize("name, extra", [("autoencoder", []), ("tokenizer", ["functional_weight=0.5", "functional_models=2"])])
def test_encoder_scripts_train_on_the_device(name, extra, debug_zoo, train_script, tmp_path, gpu):
    from weightgen.encoders.training import AutoencoderConfig, TokenizerConfig

    cls = {"autoencoder": AutoencoderConfig, "tokenizer": TokenizerConfig}[name]
    train_script(name).main(load_config(cls, ROOT / "configs" / "encoder" / "debug.yaml",
                                        [f"zoo={debug_zoo.root}", f"out={tmp_path}", "steps=2", *extra]))
    assert (tmp_path / "config.json").is_file()


GENERATORS = {  # script -> (config class, debug config, settings beyond it)
    "diffusion": ("DiffusionConfig", "debug-diffusion.yaml", []),
    "autoregressive": ("ARConfig", "debug-ar.yaml", []),
    "set_diffusion": ("SetDiffusionConfig", "debug-set-diffusion.yaml",
                      ["self_cond=1.0", "staged=true", "probe_size=8", "task_loss=0.5", "task_examples=4"]),
    "set_ar": ("SetARConfig", "debug-set-ar.yaml", ["probe_size=8"]),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_scripts_train_and_resume_on_the_device(name, debug_zoo, debug_encoders, train_script, tmp_path, gpu):
    """One step, then a resumed second one (accelerate's load_state brings the EMA back on the host)."""
    cls, config, extra = GENERATORS[name]
    source = {"diffusion": f"encoder={debug_encoders['autoencoder']}",
              "autoregressive": f"tokenizer={debug_encoders['tokenizer']}"}.get(name, f"zoo={debug_zoo.root}")
    module = train_script(name)
    for steps in (1, 2):
        module.main(load_config(getattr(module, cls), ROOT / "configs" / "generator" / config,
                                [source, f"out={tmp_path}", f"steps={steps}", "save_every=1", *extra]))
    assert (tmp_path / "model_index.json").is_file()


# --- sampling: every pipeline moved onto the stand-in GPU --------------------------------------------------

PROMPT = "classify digits 3, 5 and 8"


@pytest.mark.parametrize("name", ["diffusion", "autoregressive", "set_diffusion", "set_ar"])
def test_pipelines_sample_on_the_device(name, request, gpu):
    from weightgen.generators.autoregressive import WeightARPipeline
    from weightgen.generators.diffusion import WeightDiffusionPipeline
    from weightgen.generators.set_ar import SetARPipeline
    from weightgen.generators.set_diffusion import SetDiffusionPipeline

    cls, fixture, options = {
        "diffusion": (WeightDiffusionPipeline, "debug_generators", {"num_inference_steps": 2, "guidance_scale": 2.0}),
        "autoregressive": (WeightARPipeline, "debug_generators", {}),
        "set_diffusion": (SetDiffusionPipeline, "debug_set_generator", {"num_inference_steps": 2, "guidance_scale": 2.0}),
        "set_ar": (SetARPipeline, "debug_set_ar", {}),
    }[name]
    folder = request.getfixturevalue(fixture)
    pipe = cls.from_pretrained(folder[name] if isinstance(folder, dict) else folder).to(gpu)
    arch = "MLP 64-16-3" if name.startswith("set") else "CNN 4-3"  # the smallest each knows (AR: a step per id)
    out = pipe(PROMPT, arch=arch, num_samples=2, generator=0, **options)
    assert out.flat.device.type == "cpu" and out.flat.shape[0] == 2  # samples come back to the host


# --- the zoo trainers ----------------------------------------------------------------------------------------


def test_zoo_build_trains_on_the_device(tmp_path, monkeypatch, gpu):
    """build_zoo trains on its process's device (accelerate's) and writes host tensors."""
    from accelerate import PartialState
    from safetensors.torch import load_file

    from weightgen.config import ZooConfig
    from weightgen.zoo import trainer
    from weightgen.zoo.build import build_zoo

    PartialState()  # the process's state (the CPU here), then its device replaced for this test
    monkeypatch.setitem(PartialState._shared_state, "device", gpu)
    batches, batch_loss = [], trainer.batch_loss
    monkeypatch.setattr(trainer, "batch_loss", lambda *args, **kwargs: batches.append(args[2].device) or
                        batch_loss(*args, **kwargs))

    config = tmp_path / "zoo.yaml"
    config.write_text("name: tiny\ntasks: {ids: [digits-subset-0-1-2]}\narchs: [{family: mlp, hidden: [8]}, "
                      "{family: cnn, hidden: [2]}]\nseeds: 2\nepochs: 1\nbatch_size: 256\n")
    store = build_zoo(load_config(ZooConfig, config), tmp_path / "zoo", progress=False)
    assert batches and set(batches) == {gpu}
    assert len(store.records) == 4 and all(r["test_acc"] > 0 for r in store.records)
    assert all(load_file(str(f)) for f in (tmp_path / "zoo" / "shards").glob("*.safetensors"))


def test_lora_trainer_trains_on_the_device(gpu):
    from transformers import ViTForImageClassification

    from weightgen.config import BaseModelConfig, LoRASpec
    from weightgen.tasks import get_task
    from weightgen.zoo.lora_base import vit_config
    from weightgen.zoo.lora_trainer import factor_shapes, init_factors, train_lora_batched
    from weightgen.zoo.trainer import Recipe

    base_cfg = BaseModelConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    base, spec = ViTForImageClassification(vit_config(base_cfg)).eval(), LoRASpec(base=base_cfg, rank=2)
    tasks = [get_task("digits-invert"), get_task("digits-rotate-15")]
    init = init_factors(factor_shapes(base, spec), [torch.Generator().manual_seed(i) for i in range(2)])
    factors, records = train_lora_batched(base, spec, tasks, init, Recipe(epochs=1, batch_size=512),
                                          torch.Generator().manual_seed(0), device=gpu)
    assert all(type(f) is torch.Tensor for f in factors.values())  # handed back on the host
    assert all(0 <= r["test_acc"] <= 1 for r in records)


def test_zoo_bf16_autocasts_the_device_the_batch_is_on(gpu, monkeypatch):
    from contextlib import nullcontext

    from weightgen.specs import ArchSpec
    from weightgen.zoo.trainer import batch_loss

    kinds = []
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kwargs: kinds.append(device_type) or nullcontext())
    arch = ArchSpec.parse("MLP 64-8-3")
    params = {n: p.to(gpu) for n, p in arch.init_params(2, torch.Generator().manual_seed(0)).items()}
    batch_loss(arch, params, torch.randn(2, 5, 64).to(gpu), torch.zeros(2, 5, dtype=torch.long).to(gpu), "ce", "bf16")
    assert kinds == [gpu.type]


def test_bf16_only_where_the_hardware_runs_it(monkeypatch, caplog):
    """CPUs need AVX512-BF16 or AMX (or Arm's BF16), GPUs bf16 units of their own (emulation does
    not count); elsewhere a bf16 config trains in fp32 and says so once."""
    from accelerate import PartialState

    from weightgen import devices

    PartialState()  # this process's state (the CPU here), made before CUDA is faked below
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not devices.bf16_native("cpu")
    devices._say_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="weightgen.devices"):
        assert [devices.native_precision("bf16", "cpu", "fp32") for _ in range(3)] == ["fp32"] * 3
        assert devices.native_mixed_precision("bf16") == "no" and devices.native_mixed_precision("no") == "no"
    assert len(caplog.records) == 1 and "fp32" in caplog.records[0].getMessage()
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert devices.native_precision("bf16", "cpu", "fp32") == "bf16" == devices.native_mixed_precision("bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not devices.bf16_native("cuda")  # a pre-Ampere GPU: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert devices.bf16_native(torch.device("cuda", 1))
