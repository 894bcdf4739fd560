"""The fault campaign's files (benchmarks/bench_faults.py, part a): the valid fixtures and their
seeded mutations (safetensors headers and bytes, foreign files, zoo.json / records.jsonl / shard damage)."""


from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

import weightgen
from weightgen.checkpoint import read_metadata
from weightgen.config import ZooConfig, load_config
from weightgen.specs import ArchSpec
from weightgen.zoo.build import build_zoo

ROOT = Path(__file__).resolve().parents[1]
MAX_CHILD_SECONDS = 30.0  # a refused CLI call: interpreter start and imports, no generator load (~30 s alone)
MAX_CHILD_RSS_MB = 1_024  # torch's import takes ~300 MB; an expanded anchor bomb took over 6 GiB

DTYPES = ["I32", "U32", "I64", "I16", "I8", "U8", "BOOL", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2", "C64", "X9"]
NASTY = [None, True, -1, 0, 2**64, 10**30, 1.5, float("inf"), float("nan"), "", "x" * 10_000, [], {}, [[[1]]], {"a": 1}]
RAW = ["[" * 50_000 + "]" * 50_000, "9" * 5_000, "Infinity", "NaN", "-Infinity", "1e999", "{", '"open', "null",
       '{"family": "mlp", "sizes": [64, 1e999, 3]}', '{"family": "mlp", "sizes": [64, 1000000000, 3]}', "[]", "{}"]
SIZES = [[64, 10**9, 3], [64, 10**30, 3], [64, float("inf"), 3], [64, -8, 3], [64, 8.0, 3], [64, "8", 3], [64] * 100,
         [64, 60_000, 60_000], [], [64], [64, [8], 3], [64, True, 3], "64-8-3", None]
TASK_IDS = [None, [], 3, {}, "x" * 100_000, "digits-image-" + "9" * 5_000, "digits-rotate-" + "9" * 80, "cats",
            "IRIS", "digits-subset-1-1", "digits-noise-0"]


class Payload:
    """Pickled as a call of open(marker, "w"): unpickling it anywhere creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- fixtures ---------------------------------------------------------------------------------------
def build_fixtures(root: Path) -> dict:
    """Valid inputs to mutate and the references to compare readers' answers with."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    bases = {}
    for name, arch, task in (("mlp", "MLP 64-8-3, GELU", "digits-subset-3-5-8"), ("cnn", "CNN 4-3, ReLU", "digits-subset-1-2-7"),
                             ("iris", "MLP 4-6-3, Tanh", "iris")):
        spec = ArchSpec.parse(arch)
        sd = {n: torch.randn(s, generator=g) * 0.3 for n, s in zip(spec.layout().names, spec.layout().shapes)}
        path = weightgen.save_model(sd, root / f"{name}.safetensors", arch=spec, task=task, seed=7, generator="fuzz",
                                    metrics={"test_acc": 0.5})
        bases[name] = (path.read_bytes(), sd)
    # as weightgen wrote checkpoints before checksums: the same file without its sha256
    header, body = split(bases["mlp"][0])
    del header["__metadata__"]["sha256"]
    bases["old"] = (join(header, body), bases["mlp"][1])
    zoo = build_zoo(load_config(ZooConfig, ROOT / "configs/zoo/debug.yaml", ["epochs=1"]), root / "zoo", progress=False)
    models = {r["id"]: zoo.state_dict(r["id"]) for r in zoo.records}
    return {"root": root, "bases": bases, "meta": {k: read_metadata(root / f"{k}.safetensors") for k in ("mlp", "cnn", "iris")},
            "zoo": zoo.root, "zoo_models": models, "marker": root / "EXECUTED"}


def split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def has_checksum(data: bytes) -> bool:
    try:
        return "sha256" in split(data)[0].get("__metadata__", {})
    except (ValueError, AttributeError, RecursionError):
        return False


def join(header: dict, body: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + body


# -- mutations of one safetensors file (a checkpoint or a zoo shard) ------------------------------------
def flip(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    out, hi = bytearray(data), len(data) if hi is None else hi
    for _ in range(rng.randint(1, 4)):
        if hi > lo:
            out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def mutate_header(rng: random.Random, header: dict) -> str:
    """Edit a parsed safetensors header in place; returns what was done."""
    meta = header.setdefault("__metadata__", {})
    tensors = [k for k in header if k != "__metadata__"]
    kinds = ["meta-raw", "meta-value", "drop", "dtype", "shape", "offsets", "rename"]
    kinds += [k for k in ("arch", "task", "records") if meta.get(k) not in (None, "null")]
    kind = rng.choice(kinds)
    if kind == "meta-raw":
        meta[rng.choice([*meta, "extra"])] = rng.choice(RAW)
    elif kind == "meta-value":
        meta[rng.choice([*meta, "extra"])] = json.dumps(rng.choice(NASTY)) if rng.random() < 0.8 else 5
    elif kind == "arch":
        arch = json.loads(meta["arch"])
        arch[rng.choice(["family", "sizes", "activation", "sizes"])] = rng.choice(SIZES + NASTY[:6])
        meta["arch"] = json.dumps(arch)
    elif kind == "task":
        meta["task"] = json.dumps({"id": rng.choice(TASK_IDS)} if rng.random() < 0.8 else rng.choice(NASTY))
    elif kind == "records":
        records = json.loads(meta["records"])
        rec = rng.choice(records)
        rec[rng.choice(["row", "id", "task", "shard", "row"])] = rng.choice([-1, 1, 99, None, "0", 10**20])
        meta["records"] = json.dumps(records)
    elif kind == "drop":
        key = rng.choice([*meta, "__metadata__"])
        header.pop(key) if key == "__metadata__" else meta.pop(key)
    else:
        t = header[rng.choice(tensors)]
        shape = t["shape"]
        if kind == "dtype":
            t["dtype"] = rng.choice(DTYPES)
        elif kind == "shape":
            halved = [shape[0] * 2, shape[1] // 2, *shape[2:]] if len(shape) > 1 and shape[1] % 2 == 0 else [1, 1, *shape]
            t["shape"] = rng.choice([[1, *shape], [*shape, 1], shape[::-1], [], [10**12], [-1, *shape[1:]],
                                     [shape[0] * 2, *shape[1:]], halved])
        elif kind == "offsets":
            a, b = t["data_offsets"]
            t["data_offsets"] = rng.choice([[0, 0], [a, b + 4], [b, a], [a, 2**62], [a + 4, b]])
        else:
            name, choice = rng.choice(tensors), rng.randrange(3)
            if choice == 0:
                header[name + ".x"] = header.pop(name)
            elif choice == 1 and len(tensors) > 1:
                del header[name]
            else:
                header["extra.weight"] = dict(header[name])
    if rng.random() < 0.5:
        meta.pop("sha256", None)  # an unchecksummed file (as older weightgen wrote) reaches the deeper checks
    return kind


def mutate_safetensors(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    header, body = split(data)
    n = len(data) - len(body)
    edits = {"flip": lambda: flip(rng, data), "flip-header": lambda: flip(rng, data, 8, n),
             "flip-data": lambda: flip(rng, data, n), "truncate": lambda: data[: rng.randrange(len(data))],
             "append": lambda: data + rng.randbytes(rng.randint(1, 64)),
             "length": lambda: join(header, body, rng.choice([0, 1, n - 9, n - 7, 2**40, 2**64 - 1]))}
    kind = rng.choice([*edits, "header", "header", "header", "header"])
    if kind in edits:
        return kind, edits[kind]()
    return "header-" + mutate_header(rng, header), join(header, body)


def foreign_file(rng: random.Random, marker: Path, fix: dict) -> tuple[str, bytes]:
    """A file that is not a weightgen checkpoint; the pickles would create `marker` if unpickled."""
    kind = rng.choice(["pickle", "pickle", "torch-save", "torch-save-legacy", "zip", "empty", "random", "json", "png",
                       "npy", "plain-safetensors", "zoo-shard", "text", "zeros"])
    buf = io.BytesIO()
    if kind == "pickle":
        return kind, pickle.dumps({"weights": Payload(marker)}, protocol=rng.randint(0, pickle.HIGHEST_PROTOCOL))
    if kind.startswith("torch-save"):
        torch.save({"w": torch.ones(2), "p": Payload(marker)}, buf, _use_new_zipfile_serialization=kind == "torch-save")
        return kind, buf.getvalue()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("data.pkl", pickle.dumps(Payload(marker)))
        return kind, buf.getvalue()
    if kind == "plain-safetensors":
        return kind, safetensors_bytes({"layers.0.weight": torch.ones(8, 64)})
    if kind == "zoo-shard":
        return kind, next((fix["zoo"] / "shards").iterdir()).read_bytes()
    return kind, {"empty": b"", "random": rng.randbytes(rng.randint(1, 4096)), "json": json.dumps(fix["meta"]["mlp"]).encode(),
                  "png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(64), "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}",
                  "text": b"hello " * 100, "zeros": bytes(64)}[kind]


# -- running readers --------------------------------------------------------------------------------
def damage_records(rng: random.Random, text: str) -> tuple[str, bytes]:
    lines = text.splitlines()
    recs, i, j = [json.loads(x) for x in lines], rng.randrange(len(lines)), rng.randrange(len(lines))
    same_shard = [k for k, r in enumerate(recs) if r["shard"] == recs[i]["shard"]]
    k = rng.choice(same_shard)

    def swap():
        recs[i]["row"], recs[k]["row"] = recs[k]["row"], recs[i]["row"]

    edits = {  # on one record
        "row": lambda: recs[i].update(row=rng.choice([-1, -2, 8, 99, 10**20, recs[i]["row"] ^ 1, "0", 0.0, None, True])),
        "id": lambda: recs[i].update(id=rng.choice([recs[j]["id"], -1, "3", None, 10**30])),
        "swap": swap,
        "field": lambda: recs[i].update({rng.choice(list(recs[i])): rng.choice(NASTY)}),
        "drop-field": lambda: recs[i].pop(rng.choice(list(recs[i]))),
        "shard": lambda: recs[i].update(shard=rng.choice(["../zoo.json", "/etc/passwd", "x.safetensors", recs[j]["shard"]])),
        "acc": lambda: recs[i].update(test_acc=rng.choice([1.0, 0.0, float("nan"), "high"])),
    }
    line_edits = {  # on the lines
        "dup": lambda: lines.insert(rng.randrange(len(lines) + 1), lines[i]), "drop": lambda: lines.pop(i),
        "shuffle": lambda: rng.shuffle(lines), "brace": lambda: lines.insert(rng.randrange(len(lines) + 1), "{"),
    }
    byte_edits = {  # on the file's bytes
        "nonutf8": lambda d: (lambda at: d[:at] + b"\xff\xfe" + d[at:])(rng.randrange(len(d))),
        "truncate": lambda d: d[: rng.randrange(len(d))], "flip": lambda d: flip(rng, d),
        "whole": lambda d: rng.choice([b"[]", b"{}", b"null", b"", b"[" * 100_000]),
    }
    kind = rng.choice([*edits, "row", *line_edits, *byte_edits])
    if kind in edits:
        edits[kind]()
        lines = [json.dumps(r) for r in recs]
    elif kind in line_edits:
        line_edits[kind]()
    data = ("\n".join(lines) + "\n").encode()
    return f"records-{kind}", byte_edits[kind](data) if kind in byte_edits else data


def damage_manifest(rng: random.Random, text: str) -> tuple[str, bytes]:
    m = json.loads(text)
    s, arch = rng.choice(m["shards"]), m["archs"][rng.choice(list(m["archs"]))]
    edits = {
        "drop": lambda: m.pop(rng.choice(list(m))), "type": lambda: m.update({rng.choice(list(m)): rng.choice(NASTY)}),
        "shard-file": lambda: s.update(file=rng.choice(["../records.jsonl", "../../../../etc/passwd", "x", None,
                                                        m["shards"][0]["file"], ".hidden.safetensors"])),
        "shard-models": lambda: s.update(models=rng.choice([[], [[0]], s["models"] * 2, [[10**30, "iris", 0]],
                                                            s["models"][::-1], None])),
        "shard-arch": lambda: s.update(arch=rng.choice(["nope", None, *m["archs"]])),
        "arch": lambda: arch.update({rng.choice(["sizes", "family", "text", "sizes"]): rng.choice(SIZES + NASTY[:6])}),
        "tasks": lambda: m.update(tasks=rng.choice([list(m["tasks"]), {**m["tasks"], "cats": {}}, {"0": {}}])),
        "lora": lambda: m.update(lora=rng.choice([{"rank": "4"}, [], {"rank": 4, "target_modules": "q"},
                                                  {"rank": 4, "target_modules": [], "factors": {"a": [10**20]}}])),
        "format": lambda: m.update(format=rng.choice(["weightgen-zoo/0", None, 1])),
    }
    kind = rng.choice([*edits, "whole", "flip"])
    if kind in edits:
        edits[kind]()
    data = json.dumps(m).encode()
    if kind == "whole":
        data = rng.choice([b"[]", b"{}", b"null", b"1", b'"x"', b"\xff\xfe{}", data[: len(data) // 2], b"[" * 100_000])
    return f"manifest-{kind}", flip(rng, data) if kind == "flip" else data


def mutate_zoo(rng: random.Random, zoo: Path, fix: dict) -> str:
    """Damage one thing in a copy of the debug zoo; returns what was done."""
    target = rng.choice(["records", "records", "manifest", "shard", "shard", "structure"])
    records, manifest, shard = zoo / "records.jsonl", zoo / "zoo.json", rng.choice(sorted((zoo / "shards").iterdir()))
    if target in ("records", "manifest"):
        path = records if target == "records" else manifest
        kind, data = (damage_records if target == "records" else damage_manifest)(rng, path.read_text())
        path.write_bytes(data)
        return kind
    if target == "shard":
        kind, data = foreign_file(rng, fix["marker"], fix) if rng.random() < 0.15 else mutate_safetensors(rng, shard.read_bytes())
        shard.write_bytes(data)
        return f"shard-{kind}"
    kind = rng.choice(["no-shard", "no-records", "manifest-dir", "no-shards-dir", "records-dir"])
    {"no-shard": shard.unlink, "no-records": records.unlink, "no-shards-dir": lambda: shutil.rmtree(zoo / "shards"),
     "manifest-dir": lambda: (manifest.unlink(), manifest.mkdir()),
     "records-dir": lambda: (records.unlink(), records.mkdir())}[kind]()
    return f"structure-{kind}"
