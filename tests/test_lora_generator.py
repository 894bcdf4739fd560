"""LoRA generation: the adapter encoder, the diffusion generator over adapters, PEFT output, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from weightgen.encoders.adapter import AdapterEncoder, canonical
from weightgen.errors import CheckpointError
from weightgen.tasks import get_task

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def factors_of(store, ids) -> dict[str, torch.Tensor]:
    return {n: torch.stack([store.state_dict(i)[n] for i in ids]) for n in store.state_dict(ids[0])}


def test_encoder_is_exact_on_zoo_adapters_and_blind_to_the_lora_symmetry(debug_lora_zoo):
    enc = AdapterEncoder.from_zoo(debug_lora_zoo)
    f = factors_of(debug_lora_zoo, [0, 3, 5])
    tokens = enc.encode(f)
    assert tokens.shape == (3, enc.num_tokens, enc.token_dim) == (3, 4 * 8 + 3, 4 * 32)  # 4 delta rows a token
    back = enc.decode(tokens)
    for m in enc.targets:  # a zoo adapter's delta has rank r: the round trip keeps it exactly
        a, b = f[f"{m}.lora_A"], f[f"{m}.lora_B"]
        assert torch.allclose(back[f"{m}.lora_B"] @ back[f"{m}.lora_A"], b @ a, atol=1e-5)
    # B A = (B G)(G^-1 A): the same adapter in other factors encodes to the same tokens
    g = torch.linalg.qr(torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0)))[0] * 3.0
    moved = {}
    for m in enc.targets:
        moved[f"{m}.lora_B"] = f[f"{m}.lora_B"] @ g
        moved[f"{m}.lora_A"] = torch.linalg.solve(g, f[f"{m}.lora_A"])
    assert torch.allclose(enc.encode(moved), tokens, atol=1e-5)
    with pytest.raises(CheckpointError, match="shapes"):
        enc.encode({**f, "classifier.lora_A": f["classifier.lora_A"][:, :1]})
    with pytest.raises(CheckpointError):
        enc.decode(tokens[:, 1:])


def test_canonical_factors_keep_the_product_and_fix_order_and_sign():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, 7, generator=gen), torch.randn(5, 6, 3, generator=gen)
    ac, bc = canonical(a, b)
    assert torch.allclose(bc @ ac, b @ a, atol=1e-5)
    norms = bc.norm(dim=1)  # sqrt(singular values): descending
    assert (norms[:, :-1] >= norms[:, 1:] - 1e-6).all()
    peak = bc.abs().argmax(1, keepdim=True)
    assert (bc.gather(1, peak) > 0).all()
    ac2, bc2 = canonical(-a, -b)  # the same product from flipped factors: the same canonical form
    assert torch.allclose(ac2, ac, atol=1e-5) and torch.allclose(bc2, bc, atol=1e-5)


def test_generator_samples_adapters_and_peft_loads_them(debug_lora_generator, debug_lora_zoo, tmp_path):
    from peft import PeftModel
    from transformers import ViTForImageClassification

    from weightgen.home import load_generator
    from weightgen.zoo.lora_adapter import save_adapter
    from weightgen.zoo.lora_base import images
    from weightgen.zoo.lora_trainer import adapter_logits, multi_lora

    pipe, kind, _ = load_generator(debug_lora_generator, None)
    assert type(pipe).__name__ == "LoRADiffusionPipeline" and kind == "diffusion"
    pipe.check_base()
    out = pipe("digits rotated by 20 degrees", num_samples=3, num_inference_steps=2, generator=7)
    again = pipe("digits rotated by 20 degrees", num_samples=3, num_inference_steps=2, generator=7)
    assert out.task == get_task("digits-rotate-20") and out.num_finite == 3
    assert all(torch.equal(out.factors[n], again.factors[n]) for n in out.factors)
    assert out.factors["classifier.lora_A"].shape == (3, 2, 32)
    # the PEFT round trip: a generated adapter through peft gives weightgen's own logits
    folder = save_adapter(tmp_path / "a", out.adapter(1), out.lora, debug_lora_generator / "base", task=out.task.id)
    peft_model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(debug_lora_generator / "base"),
                                           str(folder)).eval()
    x = get_task("digits-rotate-20").split("test")[0][:50]
    spec = debug_lora_zoo_spec(debug_lora_zoo)
    with torch.no_grad():
        theirs = peft_model(pixel_values=images(x)).logits
        ours = adapter_logits(multi_lora(pipe.base, spec), {n: f[1:2] for n, f in out.factors.items()}, x[None])[0]
    assert torch.allclose(theirs, ours, atol=1e-5)


def debug_lora_zoo_spec(store):
    from weightgen.config import ZooConfig, from_dict

    return from_dict(ZooConfig, store.manifest["config"]).lora


def test_generator_refuses_what_it_cannot_make(debug_lora_generator):
    from weightgen.errors import ArchError, GeneratorError, TaskError
    from weightgen.home import load_generator

    pipe, _, _ = load_generator(debug_lora_generator, None)
    with pytest.raises(ArchError, match="LoRA adapters"):
        pipe("digits rotated by 20 degrees with an MLP 64-32-10")
    with pytest.raises(TaskError, match="trained on"):
        pipe("classify iris flowers")
    with pytest.raises(TaskError):
        pipe("   ")
    with pytest.raises(GeneratorError):
        pipe("digits rotated by 20 degrees", num_inference_steps=0)


def test_cli_samples_peft_adapters_and_reports_the_references(debug_lora_generator, run_cli, tmp_path):
    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", "digits rotated by 30 degrees", "--generator", debug_lora_generator,
                                "-n", 3, "--steps", 2, "--out", out, "--json", timeout=600)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["kind"] == "lora" and result["task"] == "digits-rotate-30" and len(result["files"]) == 3
    assert (out / "sample-000" / "adapter_config.json").is_file() and (out / "best" / "adapter_model.safetensors").is_file()
    report = result["report"]
    assert report["unseen"]  # digits-rotate-30 is the debug zoo's held-out task
    assert set(report["baselines"]) == {"base", "retrieval", "mean+gaussian", "multitask"}
    assert report["trained"]["stats"]["n"] == 2 and report["generated"]["stats"]["n"] == 3
    assert (debug_lora_generator / "references" / "multitask" / "adapter_config.json").is_file()
    code, stdout, err = run_cli("report", out)
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert "| trained |" in md and "| multitask |" in md and "| generated |" in md
    assert (out / "digits-rotate-30-0-accuracy.png").is_file() and (out / "digits-rotate-30-0-novelty.png").is_file()
    code, stdout, err = run_cli("parse", "digits rotated by 30 degrees", "--generator", debug_lora_generator)
    assert code == 0 and "LoRA adapters of its own base" in " ".join(stdout.split()), err
    code, stdout, err = run_cli("inspect", out / "best")
    assert code == 0 and "digits-rotate-30" in stdout and "base_sha256" in stdout, err
    for args, words in [(["--arch", "MLP 64-32-10"], "--arch"), ([], "trained on")]:
        prompt = "classify iris flowers" if not args else "digits rotated by 30 degrees"
        code, _, err = run_cli("sample", prompt, "--generator", debug_lora_generator, "-n", 1, "--out", tmp_path / "x", *args)
        assert code == 2 and words in err and "Traceback" not in err


def test_quantizer_keeps_the_training_adapters_it_spans(debug_lora_zoo):
    from weightgen.encoders.adapter_quantizer import AdapterQuantizer

    ids = [r["id"] for r in debug_lora_zoo.records if not r["held_out"]]
    f = factors_of(debug_lora_zoo, ids)
    q = AdapterQuantizer(debug_lora_zoo.manifest["lora"], components=len(ids) - 1, bins=4096).fit(f)
    codes = q.encode(f)
    assert codes.shape == (len(ids), 1, len(ids) - 1) and 0 <= codes.min() and codes.max() < 4096
    back = q.decode(codes)  # n - 1 directions span n centred adapters: only the bins' width is lost
    enc = AdapterEncoder.from_zoo(debug_lora_zoo)
    err = (enc.encode(back) - enc.encode(f)).norm() / enc.encode(f).norm()
    assert err < 0.01
    with pytest.raises(Exception, match="principal directions"):
        AdapterQuantizer(debug_lora_zoo.manifest["lora"], components=len(ids)).fit(f)
    # the continuous coefficients the diffusion generator can diffuse instead of delta tokens
    from weightgen.encoders.adapter_quantizer import AdapterPCA

    pca = AdapterPCA(debug_lora_zoo.manifest["lora"], components=len(ids) - 1, per_token=len(ids) - 1).fit(f)
    tokens = pca.encode(f)
    assert tokens.shape == (len(ids), 1, len(ids) - 1) and torch.allclose(tokens.std(0), torch.ones(1), atol=1e-4)
    assert (enc.encode(pca.decode(tokens)) - enc.encode(f)).norm() / enc.encode(f).norm() < 1e-4


def test_ar_generator_samples_adapters(debug_lora_ar, run_cli, tmp_path):
    from weightgen.home import load_generator

    pipe, kind, _ = load_generator(debug_lora_ar, None)
    assert type(pipe).__name__ == "LoRAARPipeline" and kind == "ar"
    out = pipe("digits rotated by 15 degrees", num_samples=4, generator=3)
    again = pipe("digits rotated by 15 degrees", num_samples=4, generator=3)
    assert out.num_finite == 4 and all(torch.equal(out.factors[n], again.factors[n]) for n in out.factors)
    code, stdout, err = run_cli("sample", "inverted digits", "--generator", debug_lora_ar, "-n", 2, "--out",
                                tmp_path / "s", "--no-eval", "--json")
    assert code == 0, err
    assert json.loads(stdout)["report"] is None and (tmp_path / "s" / "sample-001" / "adapter_config.json").is_file()
    code, _, err = run_cli("sample", "inverted digits", "--generator", debug_lora_ar, "--steps", 3, "--out", tmp_path / "t")
    assert code == 2 and "--steps" in err


def test_quickstart_lora_stages_are_the_real_configs(tmp_path):
    from weightgen.config import ZooConfig, load_config
    from weightgen.quickstart import CONFIGS, lora_stages

    all_stages, paths = lora_stages(tmp_path)
    assert [s.done() for s in all_stages] == [False, False]
    assert all_stages[1].after == (all_stages[0].name,) and paths["generator"].parent == tmp_path / "generators"
    cfg = load_config(ZooConfig, CONFIGS / "zoo" / "digits-lora-quickstart.yaml")
    full = load_config(ZooConfig, CONFIGS / "zoo" / "digits-lora.yaml")
    assert cfg.init == full.init == "lora" and cfg.lora == full.lora
    assert set(cfg.held_out) <= set(cfg.tasks.ids) and len(cfg.tasks.ids) * cfg.seeds < len(full.tasks.ids) * full.seeds


def test_diffusion_over_raw_delta_tokens_trains_and_samples(debug_lora_zoo, train_script, repo_root, tmp_path):
    """latent_components: 0 diffuses the delta tokens themselves (the encoder the PCA one is built on)."""
    from weightgen.config import load_config
    from weightgen.home import load_generator

    script = train_script("diffusion")
    script.main(load_config(script.DiffusionConfig, repo_root / "configs" / "generator" / "debug-lora-diffusion.yaml",
                            [f"zoo={debug_lora_zoo.root}", f"out={tmp_path / 'g'}", "latent_components=0", "steps=2"]))
    pipe, _, _ = load_generator(tmp_path / "g", None)
    assert type(pipe.encoder).__name__ == "AdapterEncoder"
    out = pipe("inverted digits", num_samples=2, num_inference_steps=2, generator=0)
    assert out.num_finite == 2 and out.factors["classifier.lora_B"].shape == (2, 10, 2)
