"""Token encoders (WeightVQVAE, WeightAutoencoder) on the debug zoo: one encoder for mixed MLP and
CNN archs, exact save/load round trips with the normalisation statistics inside, integer ids in
range, deterministic decoding, clear errors, a training path that learns; and clear zoo errors."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from weightgen.config import ZooConfig, load_config
from weightgen.encoders.autoencoder import WeightAutoencoder
from weightgen.encoders.training import EncoderTrainConfig, load_weights, reconstruction_loss, sample_tokens
from weightgen.encoders.vqvae import WeightVQVAE
from weightgen.errors import ArchError, ZooError
from weightgen.space.dataset import zoo_weights
from weightgen.space.layout import TokenLayout
from weightgen.specs import ArchSpec
from weightgen.zoo.build import build_zoo
from weightgen.zoo.store import ZooStore

CLASSES = [WeightVQVAE, WeightAutoencoder]
CLASS_IDS = ["vqvae", "autoencoder"]
TINY = {"hidden": 32, "embed_dim": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train ~100x slower with two intra-op threads when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(debug_zoo):
    data = zoo_weights(debug_zoo)
    assert {d.arch.family for d in data} == {"mlp", "cnn"}
    return data


def _fitted(cls, data, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = cls([d.arch.to_dict() for d in data], **{**TINY, **kwargs}).eval()
    model.token_table({d.arch: d.train for d in data})  # fits the normalisation statistics
    return model


def _public(config) -> dict:
    """A diffusers config without its bookkeeping keys, as JSON would hold it (tuples as lists)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def _code_dim(model) -> int:
    return model.ids_per_token if isinstance(model, WeightVQVAE) else model.config.latent_dim


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_one_encoder_encodes_and_decodes_every_arch(cls, data):
    model = _fitted(cls, data)
    for d in data:
        num_tokens = TokenLayout(d.arch, 16).num_tokens
        for flat in (d.train, d.held_out[:2] if len(d.held_out) else d.train[:1]):
            code = model.encode(flat, d.arch)
            assert code.shape == (len(flat), num_tokens, _code_dim(model)), d.arch.slug
            assert code.dtype == (torch.long if cls is WeightVQVAE else torch.float32)
            decoded = model.decode(code, d.arch)
            assert decoded.shape == flat.shape and decoded.dtype == torch.float32
            assert torch.isfinite(decoded).all()


@pytest.mark.parametrize(
    "cls",
    [
        WeightVQVAE,
        WeightAutoencoder,
    ],
    ids=CLASS_IDS,
)
def test_empty_batch_encodes_and_decodes_to_empty(cls, data):
    model = _fitted(cls, data)
    arch = data[0].arch
    empty = data[0].train[:0]
    code = model.encode(empty, arch)
    assert code.shape == (0, TokenLayout(arch, 16).num_tokens, _code_dim(model))
    assert model.decode(code, arch).shape == empty.shape


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_save_load_round_trip_is_exact_and_carries_the_statistics(cls, data, tmp_path):
    model = _fitted(cls, data)
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == cls.__name__
    assert _public(loaded.config) == _public(model.config)

    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for key in saved:
        assert torch.equal(saved[key], back[key]), key
    for i in range(len(data)):  # the statistics were fitted (not their defaults) and came back
        assert saved[f"stats.mean_{i}"].abs().sum() > 0
        assert not torch.equal(saved[f"stats.std_{i}"], torch.ones_like(saved[f"stats.std_{i}"]))

    for d in data:
        code = model.encode(d.train, d.arch)
        assert torch.equal(loaded.encode(d.train, d.arch), code), d.arch.slug
        assert torch.equal(loaded.decode(code, d.arch), model.decode(code, d.arch)), d.arch.slug


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_decode_of_encode_is_deterministic_and_matches_the_forward_pass(cls, data):
    model = _fitted(cls, data)
    for d in data:
        code = model.encode(d.train, d.arch)
        first = model.decode(code, d.arch)
        assert torch.equal(model.decode(model.encode(d.train, d.arch), d.arch), first)

        # encode/decode agree with forward(), the path training uses
        tokens = model.tokens(d.arch, d.train)
        n, t, width = tokens.shape
        index, meta = model._index_meta(d.arch, n)
        with torch.no_grad():
            recon, inner = model(tokens.reshape(n * t, width), index, meta)
        torch.testing.assert_close(inner.reshape(n, t, -1).to(code.dtype), code)
        mask = model.stats.layout(d.arch).mask
        torch.testing.assert_close(first, model.untokens(d.arch, recon.reshape(n, t, width) * mask))


def test_vq_ids_are_integers_in_codebook_range(data):
    model = _fitted(WeightVQVAE, data)
    g = torch.Generator().manual_seed(0)
    for d in data:
        wild = 100 * torch.randn(3, d.train.shape[1], generator=g)  # far outside the zoo
        for flat in (d.train, wild):
            ids = model.encode(flat, d.arch)
            assert ids.dtype == torch.long
            assert ids.min() >= 0 and ids.max() < model.codebook_size
    assert model.encode(data[0].train, data[0].arch).unique().numel() > 1


def test_default_vq_config_is_64_bits_and_compression_8(data):
    model = WeightVQVAE([d.arch.to_dict() for d in data])
    assert model.codebook_size == 256
    assert model.ids_per_token == 8
    assert model.bits_per_token == 64.0
    assert model.compression == 8.0  # 16 floats of 32 bits -> 64 bits


def test_vq_bookkeeping_matches_what_encode_produces(data):
    model = _fitted(WeightVQVAE, data, levels=(8, 5, 5, 5), groups=2, num_quantizers=1)
    assert (model.codebook_size, model.ids_per_token) == (1000, 2)
    assert model.bits_per_token == pytest.approx(2 * math.log2(1000))
    assert model.compression == pytest.approx(32 * 16 / (2 * math.log2(1000)))
    ids = model.encode(data[0].train, data[0].arch)
    assert ids.shape[-1] == model.ids_per_token and ids.max() < model.codebook_size
    assert model.decode(ids, data[0].arch).shape == data[0].train.shape


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize(
    "arch",
    [ArchSpec("mlp", (64, 32, 3)), ArchSpec("mlp", (64, 16, 3), "gelu"), ArchSpec("cnn", (8, 3))],
    ids=lambda a: a.slug,
)
def test_an_arch_not_fitted_for_raises_arch_error_naming_it(cls, arch, data):
    model = _fitted(cls, data)
    flat = torch.zeros(1, arch.layout().numel)
    with pytest.raises(ArchError, match=re.escape(arch.describe())):
        model.encode(flat, arch)
    code = model.encode(data[0].train[:1], data[0].arch)
    with pytest.raises(ArchError, match=re.escape(arch.describe())):
        model.decode(code, arch)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_short_training_reduces_reconstruction_error(cls, data):
    model = _fitted(cls, data)
    table = model.token_table({d.arch: d.train for d in data})

    def mse() -> float:
        model.eval()
        with torch.no_grad():
            recon, _ = model(table["tokens"], table["arch"], table["meta"])
        return reconstruction_loss(recon, table).item()

    before = mse()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(300):
        batch = sample_tokens(table, 256, step, seed=0, rank=0)
        recon, _ = model(batch["tokens"], batch["arch"], batch["meta"])
        loss = reconstruction_loss(recon, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mse()
    assert after < 0.5 * before, (before, after)


def test_autoencoder_perturbs_latents_only_in_train_mode(data):
    model = _fitted(WeightAutoencoder, data)
    table = model.token_table({d.arch: d.train for d in data})
    args = table["tokens"][:512], table["arch"][:512], table["meta"][:512]
    with torch.no_grad():
        model.train()
        (r1, z1), (r2, z2) = model(*args), model(*args)
        assert torch.equal(z1, z2)  # the latent itself is clean
        assert not torch.equal(r1, r2)  # the decoder saw noisy latents
        clean_train, _ = model(*args, noise=False)
        model.eval()
        (e1, _), (e2, _) = model(*args), model(*args)
    assert torch.equal(e1, e2)
    assert torch.equal(clean_train, e1)
    flat, arch = data[0].train, data[0].arch
    model.train()  # encode/decode never add noise
    assert torch.equal(
        model.decode(model.encode(flat, arch), arch), model.decode(model.encode(flat, arch), arch)
    )


# -- zoo errors ---------------------------------------------------------------------------------


def _copy_zoo(debug_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(debug_zoo.root, root)
    return root


def _both_raise(root, match: str) -> None:
    """zoo_weights and the training scripts' load_weights fail with the same clear ZooError."""
    with pytest.raises(ZooError, match=match):
        zoo_weights(ZooStore(root))
    with pytest.raises(ZooError, match=match):
        load_weights(EncoderTrainConfig(zoo=str(root)))


def test_missing_zoo_folder_raises_zoo_error(tmp_path):
    root = tmp_path / "nowhere"
    _both_raise(root, f"no zoo at {re.escape(str(root))}: the folder does not exist")


def test_zoo_without_records_raises_zoo_error(debug_zoo, tmp_path):
    root = _copy_zoo(debug_zoo, tmp_path)
    (root / "records.jsonl").unlink()
    _both_raise(root, "is incomplete: records.jsonl is missing")


def test_zoo_with_missing_records_raises_zoo_error(debug_zoo, tmp_path):
    root = _copy_zoo(debug_zoo, tmp_path)
    lines = (root / "records.jsonl").read_text().splitlines(keepends=True)
    (root / "records.jsonl").write_text("".join(lines[:-1]))
    _both_raise(root, f"is incomplete: {len(lines) - 1} of {len(lines)} models are built")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_zoo_with_a_bad_shard_raises_zoo_error_naming_it(debug_zoo, tmp_path, damage):
    root = _copy_zoo(debug_zoo, tmp_path)
    shard = sorted((root / "shards").iterdir())[1]
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    _both_raise(root, f"zoo shard {re.escape(str(shard))} is missing or corrupt")


def test_zoo_with_only_held_out_models_has_nothing_to_train_on(debug_config_path, tmp_path):
    # built so (records are checked against their shards, so editing records.jsonl is refused earlier)
    cfg = load_config(ZooConfig, debug_config_path, ["held_out_fraction=1.0", "epochs=1"])
    store = build_zoo(cfg, tmp_path / "all-held-out", progress=False)
    assert all(r["held_out"] for r in store.records)
    with pytest.raises(ZooError, match="has no non-held-out models to train on"):
        load_weights(EncoderTrainConfig(zoo=str(store.root)))


def test_zoo_weights_of_an_unknown_arch_raises_zoo_error(debug_zoo):
    with pytest.raises(ZooError, match="has no arch mlp-9-9-relu; it has mlp-64-16-3-relu"):
        zoo_weights(debug_zoo, archs=["mlp-9-9-relu"])
