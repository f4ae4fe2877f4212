"""Checkpoints: the official layout, loading by path or name, and the bundled default weights.

File layout (the official `train_liif.py` layout; the official `models.make(sv['model'],
load_sd=True)` loads ours too):
    {'model': {'name': 'liif', 'args': {...}, 'sd': state_dict}, 'epoch': int, ...}
We add a 'liif_cli' entry (metadata: version, training summary) that the official code ignores.
Files are always read with `weights_only=True` (a checkpoint can never run code) and mapped to
the CPU first, so files saved on a GPU load anywhere.

`.safetensors` files (no pickle at all) hold the same state dict, with the official spec in the
file's string metadata: 'name' ("liif"), 'args' (JSON), and our 'liif_cli' entry (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from liif_cli.errors import CheckpointError, UsageError
from liif_cli.io.files import atomic_write
from liif_cli.model import SRModel, arch_name, build_model, config_from_spec
from liif_cli.runtime.device import resolve_device
from liif_cli.runtime.options import check_denoise

PACKAGE_WEIGHTS_DIR = Path(__file__).parents[1] / "bundled"  # weights shipped in the package
DEFAULT_MODEL = "default"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")  # what --model and the models folder load
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class BundledWeights:
    """Weights shipped inside the package, declared as data."""

    name: str  # what users type after --model
    file: str  # file name in liif_cli/bundled/
    sha256: str  # of the file, checked on every load
    description: str  # one line for `liif models`
    steps: int = 0  # optimizer steps of training behind the weights
    recipe: str = ""  # the commands that made them
    # `liif eval` results behind the model card: dataset -> "x2" -> {"model": dB, "bicubic": dB}
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # --denoise S blends the weights (1 - S)·partner + S·these (Real-ESRGAN's denoise strength);
    # denoise_default is the S that `--model NAME` alone runs at
    denoise_partner: str = ""
    denoise_default: float = 1.0
    # more `liif eval` results: degradation spec -> dataset -> "x2" -> {method: dB}
    degraded_metrics: dict[str, dict[str, dict[str, dict[str, float]]]] = field(
        default_factory=dict)


def _bundled() -> dict[str, BundledWeights]:
    """The weights the package ships, from bundled/bundled.json (written by
    scripts/bundle_default.py; the model card is the README's "Default model" section)."""
    manifest = PACKAGE_WEIGHTS_DIR / "bundled.json"
    if not manifest.exists():
        return {}
    entries = json.loads(manifest.read_text())
    known = {f.name for f in fields(BundledWeights)}
    return {e["name"]: BundledWeights(**{k: v for k, v in e.items() if k in known})
            for e in entries}


BUNDLED: dict[str, BundledWeights] = _bundled()


def user_models_dir() -> Path:
    """Where users drop extra checkpoints to load them by name (platformdirs' data dir)."""
    import platformdirs

    env = os.environ.get("LIIF_MODELS_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("liif-cli")) / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load a checkpoint safely (weights only, onto the CPU) with one-line errors.

    A .safetensors file is read without pickle and returned in the same layout.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"model path is a folder, not a checkpoint file: {path}")
    try:
        with open(path, "rb"):  # unreadable (permissions, a dangling link): said so, first
            pass
    except OSError as e:
        raise CheckpointError(f"cannot read the model file {path}: "
                              f"{e.strerror or type(e).__name__}") from None
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty: {path}")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an ONNX graph, for runtimes such as onnxruntime; "
                              "liif loads .pth or .safetensors models")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return read_safetensors(path)
    try:
        with warnings.catch_warnings():  # its advice on pickle protocols is not for our users
            warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                    category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoints; all mean the same
        if isinstance(e, MemoryError):
            raise
        with open(path, "rb") as f:
            head = f.read(4)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Unsupported global" in str(e) or "Unsupported class" in str(e):
            reason = "it holds Python objects that could run code; refusing to load it"
        elif head == b"PK\x03\x04":  # torch.save's zip, its end missing or its bytes changed
            reason = "damaged or cut short: a torch.save file, but not whole"
        elif head[:1] == b"\x80":  # a pickle (it starts with its protocol) torch's safe
            # loader cannot read: e.g. protocol 4's framing, "Unsupported operand 149"
            reason = ("a pickle that the safe loader cannot read; refusing to load it with "
                      "pickle's code execution (re-save it with torch.save)")
        else:  # neither torch.save's zip nor a pickle: torch says "pop from empty list",
            # KeyError('101'), "Unsupported operand"
            reason = "unrecognised content: not a torch.save file"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason[:160]})"
                              ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a LIIF checkpoint: no 'model' entry "
                              "(expected the official {'model': {'name', 'args', 'sd'}} layout)")
    spec = ckpt["model"]
    if not isinstance(spec, dict) or "sd" not in spec:
        raise CheckpointError(f"{path} is not a LIIF checkpoint: 'model' has no state dict 'sd'")
    return ckpt


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A .safetensors model -> the official checkpoint layout; its spec comes from metadata."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends for broken files
        if isinstance(e, MemoryError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or "
                              f"corrupt: {reason[:160]})") from None
    if "name" not in meta or "args" not in meta:
        raise CheckpointError(f"{path} has weights but no LIIF spec in its metadata ('name' "
                              "and 'args'); make one with `liif export MODEL --format "
                              "safetensors`")
    try:
        args = json.loads(meta["args"])
        extra = json.loads(meta.get("liif_cli") or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its 'args' or 'liif_cli' metadata is not JSON") from None
    if not isinstance(args, dict) or not isinstance(extra, dict):
        raise CheckpointError(f"{path}: its 'args' metadata is not a JSON object")
    ckpt: dict[str, Any] = {"model": {"name": meta["name"], "args": args, "sd": sd}}
    if extra:
        ckpt["liif_cli"] = extra
    return ckpt


def model_from_spec(spec: dict[str, Any], *, source: str = "checkpoint") -> SRModel:
    """Build the model a spec describes (LIIF 'liif' or LM-LIIF 'lmliif'); load 'sd' strictly."""
    try:
        try:
            config = config_from_spec(spec)
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # names right, values not
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"malformed model spec ({first[:160]})") from None
        model = build_model(config)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    sd = spec["sd"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: 'sd' is not a state dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{source}: state dict does not match a {config.encoder}-"
                              f"{arch_name(config)}: "
                              + "; ".join(parts))
    for k, v in expected.items():
        got = sd[k]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(v.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"{source}: wrong shape for {k}: {shape}, expected "
                                  f"{tuple(v.shape)}")
        if not got.is_floating_point():
            raise CheckpointError(f"{source}: {k} is not a floating-point tensor")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


@dataclass(frozen=True)
class ModelCard:
    """What is known about a loaded network, kept on it as `model.card` (as whisper keeps its
    dimensions on `model.dims`): `load_model` returns the network itself."""

    name: str  # what to call it in summaries and tables
    path: Path | None  # the file it came from; None for a blend made in memory
    meta: dict[str, Any] = field(default_factory=dict)  # the file's 'liif_cli' entry + 'epoch'


def card_of(model: SRModel) -> ModelCard | None:
    """`model.card`, or None for a network built in code."""
    card = getattr(model, "card", None)
    return card if isinstance(card, ModelCard) else None


def card_or_class(model: SRModel) -> ModelCard:
    """`model.card`; a network built in code gets one named by its class (no path, no meta)."""
    return card_of(model) or ModelCard(type(model).__name__.lower(), None)


def _with_card(model: SRModel, card: ModelCard) -> SRModel:
    model.card = card  # a plain attribute: not in state_dict, kept by copy.deepcopy and pickle
    return model


def load_checkpoint(path: str | os.PathLike, *, name: str | None = None) -> SRModel:
    """The network in a checkpoint file, on the CPU, in eval mode, with its `card`."""
    ckpt = read_checkpoint(path)
    model = model_from_spec(ckpt["model"], source=str(path))
    meta = dict(ckpt.get("liif_cli") or {})
    if "epoch" in ckpt:
        meta.setdefault("epoch", ckpt["epoch"])
    return _with_card(model, ModelCard(name or Path(path).stem, Path(path), meta))


def resolve_model_path(model: str | os.PathLike | None) -> tuple[str, Path]:
    """--model value -> (display name, file). None means the bundled default."""
    key = DEFAULT_MODEL if model is None else str(model)
    if key in BUNDLED:
        w = BUNDLED[key]
        path = PACKAGE_WEIGHTS_DIR / w.file
        if not path.exists():
            raise CheckpointError(f"bundled model file missing: {path}; reinstall liif-cli")
        digest = sha256_file(path)
        if digest != w.sha256:
            raise CheckpointError(f"bundled model {key!r} is corrupt (sha256 {digest[:12]}… "
                                  f"expected {w.sha256[:12]}…); reinstall liif-cli")
        return key, path
    path = Path(key).expanduser()
    if path.suffix.lower() in (*CHECKPOINT_SUFFIXES, ".onnx") or path.exists() or os.sep in key:
        return path.stem, path
    for suffix in CHECKPOINT_SUFFIXES:
        candidate = user_models_dir() / f"{key}{suffix}"
        try:
            if candidate.exists():
                return key, candidate
        except OSError as e:  # a models folder this user cannot search
            raise CheckpointError(f"cannot read the models folder {candidate.parent}: "
                                  f"{e.strerror or type(e).__name__}") from None
    if model is None:
        raise CheckpointError("no bundled default model in this build; pass --model PATH to a "
                              "LIIF checkpoint (e.g. the official edsr-baseline-liif.pth)")
    raise CheckpointError(f"unknown model {key!r}: not a file, not bundled "
                          f"({', '.join(BUNDLED) or 'none'}), not in {user_models_dir()}; "
                          "run `liif models` to list them")


def load_model(model: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
               denoise: float | None = None) -> SRModel:
    """Load the bundled default (None), a bundled or user model by name, or any file by path.

    Returns the network (LIIF or LM-LIIF, an nn.Module) on `device` in eval mode; "auto" (the
    default, as `Upscaler`'s) is `device.resolve_device`'s pick: CUDA, MPS, else the CPU. Its
    name, file and metadata are on `model.card` (`ModelCard`).

    `denoise` (0 to 1): the weights of a model that has a denoise partner (`real`, partner
    `default`) blended as (1 - S)·partner + S·model before the run, one forward pass at no
    extra cost; S = 0 is exactly the partner, 1 exactly the model. With `denoise` given, None,
    `default` and `real` all mean that pair. Without it, such a model runs at its
    `denoise_default`.
    """
    if not (model is None or isinstance(model, (str, os.PathLike))):
        what = ("a network that is not a LIIF model (LIIF or LM-LIIF, as load_model returns)"
                if isinstance(model, torch.nn.Module) else f"of type {type(model).__name__}")
        raise UsageError(f"model is {what}: give a bundled or user model name, a checkpoint "
                         "path, or a network load_model returned")
    device = resolve_device(device)
    if denoise is not None:
        return load_denoise_blend(model, denoise, device=device)
    name, path = resolve_model_path(model)
    if name in BUNDLED and BUNDLED[name].denoise_partner and BUNDLED[name].denoise_default != 1:
        return load_denoise_blend(name, BUNDLED[name].denoise_default, device=device)
    return load_checkpoint(path, name=name).to(device)


def check_denoise_model(model: Any, denoise: float | None) -> None:
    """A task's `denoise` request checked before any work: the strength in [0, 1], and the
    model named (a name, a path or None), since a network already loaded cannot be blended."""
    if denoise is None:
        return
    check_denoise(denoise)
    if not (model is None or isinstance(model, (str, os.PathLike))):
        raise UsageError("denoise blends a bundled pair's weights: give the model by name")


def denoise_pair(model: str | os.PathLike | None) -> tuple[str, str]:
    """(partner, model) names of the bundled pair that --denoise blends, or a UsageError."""
    key = DEFAULT_MODEL if model is None else str(model)
    pairs = {w.name: w.denoise_partner for w in BUNDLED.values() if w.denoise_partner}
    if key in pairs:
        return pairs[key], key
    partners = {v: k for k, v in pairs.items()}
    if key in partners:  # `--model default --denoise S`: the same pair, seen from its start
        return key, partners[key]
    raise UsageError(f"--denoise needs a model with a denoise partner "
                     f"({', '.join(pairs) or 'none bundled'}); {key!r} has none")


def load_denoise_blend(model: str | os.PathLike | None, strength: float, *,
                       device: str | torch.device = "cpu") -> SRModel:
    """The pair's weights blended at `strength` (see `load_model`)."""
    check_denoise(strength)
    start, end = denoise_pair(model)
    if strength == 0 or strength == 1:  # exactly one model's pixels, no arithmetic
        name = start if strength == 0 else end
        loaded = load_checkpoint(resolve_model_path(name)[1], name=name)
    else:
        a = load_checkpoint(resolve_model_path(start)[1], name=start)
        b = load_checkpoint(resolve_model_path(end)[1], name=end)
        blend = interpolate_state(a.state_dict(), b.state_dict(), strength)
        a.load_state_dict(blend, strict=True)
        loaded = _with_card(a, ModelCard(f"{end}@{strength:g}", None,
                                         {"denoise": strength, "pair": [start, end]}))
    return loaded.to(device)


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                      t: float) -> dict[str, torch.Tensor]:
    """(1 - t)·a + t·b, key by key; the two must be the same architecture."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise CheckpointError("cannot blend models of different architectures")
    return {k: torch.lerp(a[k].float(), b[k].float(), float(t)) for k in a}


def list_models() -> list[dict[str, Any]]:
    """Bundled and user-folder models with architecture and size, for `liif models`."""
    rows = []
    for w in BUNDLED.values():
        rows.append({"name": w.name, "path": PACKAGE_WEIGHTS_DIR / w.file, "source": "bundled",
                     "description": w.description})
    folder = user_models_dir()
    try:
        found = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as e:  # unreadable: its models cannot be loaded either
        raise CheckpointError(f"cannot read the models folder {folder}: "
                              f"{e.strerror or type(e).__name__}") from None
    if found:
        for p in found:
            if p.suffix.lower() in CHECKPOINT_SUFFIXES:
                # a bundled name wins in --model: say so rather than hide the file
                note = (f"hidden by the bundled {p.stem!r} (--model {p.stem} loads that): "
                        "rename the file to use it" if p.stem in BUNDLED else "")
                rows.append({"name": p.stem, "path": p, "source": "user", "description": note})
    for row in rows:
        try:
            m = load_checkpoint(row["path"])
            meta = m.card.meta
            row["encoder"] = m.config.encoder
            row["arch"] = arch_name(m)
            row["params"] = sum(t.numel() for t in m.state_dict().values())
            # how much training is behind it: our files count steps, official ones epochs
            row["trained"] = (f"{meta['steps']:,} steps" if meta.get("steps") else
                              f"{meta['epoch']} epochs" if meta.get("epoch") else "")
        except CheckpointError as e:
            row["encoder"] = "unreadable"
            row["arch"] = ""
            row["params"] = 0
            row["trained"] = ""
            row["description"] = str(e)
        try:
            row["bytes"] = row["path"].stat().st_size
        except OSError:  # a dangling link (said in its description)
            row["bytes"] = 0
    return rows


def checkpoint_dict(model: SRModel, *, half: bool = False, **extra: Any) -> dict[str, Any]:
    """The official layout for `model`, plus our extra top-level entries."""
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
          for k, v in model.state_dict().items()}
    spec = model.config.to_spec()
    spec["sd"] = sd
    return {"model": spec, **extra}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` (its folder made if missing), replacing it atomically and durably
    (`files.atomic_write`): never a partial file, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=True, durable=True)


def save_checkpoint(model: SRModel, path: str | os.PathLike, **extra: Any) -> None:
    atomic_torch_save(checkpoint_dict(model, **extra), path)


def safetensors_bytes(ckpt: dict[str, Any]) -> bytes:
    """A checkpoint (official layout) as a .safetensors file: its 'sd' tensors as they are
    (dtype kept), the spec's 'name' and 'args' and our 'liif_cli' entry as JSON metadata."""
    from safetensors.torch import save

    spec = ckpt["model"]
    tensors = {k: v.detach().cpu().contiguous() for k, v in spec["sd"].items()}
    meta = {"format": "pt", "name": str(spec["name"]),
            "args": json.dumps(spec.get("args") or {}, sort_keys=True)}
    extra = dict(ckpt.get("liif_cli") or {})
    if "epoch" in ckpt:
        extra.setdefault("epoch", ckpt["epoch"])
    if extra:
        meta["liif_cli"] = json.dumps(extra, sort_keys=True, default=str)
    return save(tensors, metadata=meta)
