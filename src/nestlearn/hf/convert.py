"""Convert a nestlearn checkpoint to a Hugging Face folder and back (``nestlearn convert``).

A Hugging Face folder holds ``config.json`` (:class:`~nestlearn.hf.NestlearnConfig`: the model
config, the tokenizer description and the rest of the run record), ``model.safetensors``,
``generation_config.json``, and ``tokenizer.json`` + ``tokenizer_config.json`` so that
``AutoTokenizer`` gives the same ids as the run's tokenizer (for a byte-level run: a byte-level BPE
without merges, id = byte value; for a BPE run: its own ``tokenizer.json``, byte for byte).

Converting back writes a model-only checkpoint (no optimizer state or RNG): it serves
``nestlearn eval | generate | learn | info``, not ``train --resume``. Both directions write to a
temporary path and rename it into place, so an interrupted conversion leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nestlearn
from nestlearn.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    _byte_to_unicode,
    tokenizer_from_description,
)
from nestlearn.errors import CheckpointError, NestlearnError
from nestlearn.hf.modeling import MODEL_TYPE, NestlearnForCausalLM
from nestlearn.train.checkpoint import save_checkpoint

HF_CONFIG = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# What a checkpoint's metadata records besides the model and tokenizer that a round trip keeps.
_RUN_KEYS = ("step", "tokens_seen", "data", "last_eval")


def is_hf_folder(path: str | Path) -> bool:
    """True if ``path`` is a folder with a ``config.json`` of model_type "nestlearn"."""
    config = Path(path) / HF_CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, OSError):
        return False


def byte_tokenizer_json() -> str:
    """The byte tokenizer as a ``tokenizers`` JSON: byte-level BPE without merges, id = byte value."""
    tk = BPETokenizer._import()
    tok = tk.Tokenizer(tk.models.BPE(vocab={c: b for b, c in _byte_to_unicode().items()}, merges=[]))
    # No regex split: every byte is its own token whatever the text, exactly like ByteTokenizer.
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = tk.decoders.ByteLevel()
    return tok.to_str()


def save_tokenizer(tokenizer: ByteTokenizer | BPETokenizer, out_dir: str | Path,
                   model_max_length: int | None = None) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``AutoTokenizer.from_pretrained(out_dir)``."""
    out_dir = Path(out_dir)
    text = tokenizer.to_json() if isinstance(tokenizer, BPETokenizer) else byte_tokenizer_json()
    (out_dir / TOKENIZER_FILE).write_text(text, encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _check_free(path: Path) -> None:
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise NestlearnError(f"{path} already exists; choose another output path or remove it first")


def checkpoint_to_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the model of a nestlearn checkpoint (file or run folder) as a Hugging Face folder."""
    from nestlearn.train.loading import load_model

    out_dir = Path(out_dir)
    _check_free(out_dir)
    model, tokenizer, meta = load_model(checkpoint)
    run = {"config": {k: v for k, v in meta["config"].items() if k != "model"},
           **{k: meta[k] for k in _RUN_KEYS if k in meta}}
    hf = NestlearnForCausalLM.from_native(model, tokenizer.describe(), run)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, model.config.max_seq_len if model.config.bounded_context else None)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def hf_to_checkpoint(hf_dir: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face nestlearn folder as a nestlearn checkpoint.

    ``out`` ending in ``.safetensors`` is the checkpoint file; anything else is a folder that receives
    ``checkpoint.safetensors`` (so the ``nestlearn`` commands accept it as a run folder).
    """
    from nestlearn.train.config import run_config_from_dict

    hf_dir, out = Path(hf_dir), Path(out)
    if not is_hf_folder(hf_dir):
        raise CheckpointError(f"{hf_dir} is not a Hugging Face nestlearn folder (no config.json with "
                              f"model_type {MODEL_TYPE!r})")
    path = out if out.suffix == ".safetensors" else out / "checkpoint.safetensors"
    _check_free(path)
    hf = NestlearnForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    cfg = hf.config
    if not cfg.nestlearn_tokenizer:
        raise CheckpointError(f"{hf_dir}/config.json has no nestlearn_tokenizer; a checkpoint needs its tokenizer "
                              "(save the model with nestlearn.hf.checkpoint_to_hf or set config.nestlearn_tokenizer)")
    tokenizer_json = None
    if cfg.nestlearn_tokenizer.get("kind") == "bpe":
        tokenizer_json = (hf_dir / TOKENIZER_FILE).read_text(encoding="utf-8")
    tokenizer_from_description(cfg.nestlearn_tokenizer, tokenizer_json)  # fails on a mismatched tokenizer.json
    run: dict[str, Any] = dict(cfg.nestlearn_run or {})
    run_config = run_config_from_dict({"model": cfg.nestlearn_model, **run.pop("config", {})})
    meta = {"format": 1, "nestlearn_version": nestlearn.__version__, "config": run_config.to_dict(),
            "step": run.pop("step", 0), **run, "tokenizer": cfg.nestlearn_tokenizer, "tokenizer_json": tokenizer_json,
            "parameters": hf.model.num_parameters(non_embedding=False), "converted_from": str(hf_dir)}
    tensors = {f"model/{k}": v for k, v in hf.model.state_dict().items()}
    return save_checkpoint(path, tensors, meta)


def convert(src: str | Path, out: str | Path, to: str | None = None) -> tuple[str, Path]:
    """Convert in the direction the source implies (or ``to``: "hf" or "nestlearn"); returns (to, written path)."""
    if to is None:
        to = "nestlearn" if is_hf_folder(src) else "hf"
    if to == "hf":
        return to, checkpoint_to_hf(src, out)
    if to == "nestlearn":
        return to, hf_to_checkpoint(src, out)
    raise NestlearnError(f"--to: must be one of 'hf', 'nestlearn', got {to!r}")
