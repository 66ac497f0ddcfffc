"""Processor parity: the settings a loaded Gemma 3 (MedGemma, MedGemma-1.5) processor applies, checked against
what the model folder's own files declare.

Robustness numbers depend on what reaches the model: the image size (896 x 896 in the released
``preprocessor_config.json``), the normalisation (mean = std = 0.5), the resampling filter, pan-and-scan
(off: ``do_pan_and_scan`` is null in the release), the number of image tokens (``image_seq_length`` 256 in
``processor_config.json``) and the chat template (``chat_template.jinja`` / ``chat_template.json`` /
``tokenizer_config.json``), which places ``<start_of_image>`` where the image item is. Nothing here sets a
value: a loaded processor that disagrees with its folder (a library default overriding a file, a missing
template) stops the run with the file and field named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.errors import CheckpointError

PRE = "preprocessor_config.json"
PROC = "processor_config.json"
# setting -> the folder file that declares it
SOURCES = {"image_size": PRE, "image_mean": PRE, "image_std": PRE, "rescale_factor": PRE, "resample": PRE,
           "do_pan_and_scan": PRE, "image_seq_length": PROC, "chat_template": "chat template file"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def folder_chat_template(path: str | Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``chat_template.json``, else the
    ``chat_template`` field of ``tokenizer_config.json``; ``None`` when none holds one."""
    root = Path(path)
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = _read_json(root / name).get("chat_template")
        if template:
            return template
    return None


def folder_settings(path: str | Path) -> dict[str, Any]:
    """Settings declared by a Gemma 3 folder's files (``None`` where a file leaves a field out)."""
    root = Path(path)
    proc = _read_json(root / PROC)
    # the releases keep the image processor in preprocessor_config.json; transformers 5 nests it in
    # processor_config.json when it saves a processor
    pre = _read_json(root / PRE) or proc.get("image_processor") or {}
    if not pre:
        raise CheckpointError(f"{root}: no {PRE} (the image processor settings of the released model)")
    size = pre.get("size") or {}
    return {
        "image_size": [size.get("height"), size.get("width")] if size else None,
        "image_mean": pre.get("image_mean"),
        "image_std": pre.get("image_std"),
        "rescale_factor": pre.get("rescale_factor"),
        "resample": pre.get("resample"),
        "do_pan_and_scan": bool(pre.get("do_pan_and_scan")),  # null in the release = off
        "image_seq_length": proc.get("image_seq_length", pre.get("image_seq_length")),
        "chat_template": folder_chat_template(root),
    }


def loaded_settings(processor: Any) -> dict[str, Any]:
    """The same settings as the loaded ``Gemma3Processor`` will apply them."""
    ip = processor.image_processor
    size = ip.size
    return {
        "image_size": [size["height"], size["width"]],
        "image_mean": [float(x) for x in ip.image_mean],
        "image_std": [float(x) for x in ip.image_std],
        "rescale_factor": float(ip.rescale_factor),
        "resample": int(ip.resample),
        "do_pan_and_scan": bool(ip.do_pan_and_scan),
        "image_seq_length": int(processor.image_seq_length),
        "chat_template": processor.chat_template,
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str) or isinstance(a, bool) or isinstance(b, bool):
        return a == b
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9, atol=0))


def check_processor_parity(path: str | Path, processor: Any) -> dict[str, Any]:
    """Compare the loaded processor with folder ``path``'s files; return the settings (the template as a
    short hash). Raises :class:`CheckpointError` naming the file and field of the first disagreement."""
    root = Path(path)
    want, got = folder_settings(root), loaded_settings(processor)
    if want["chat_template"] is None:
        raise CheckpointError(f"{root}: no chat template (chat_template.jinja, chat_template.json or "
                              "tokenizer_config.json 'chat_template'); the model's own template is required")
    for key, value in want.items():
        if value is not None and not _same(value, got[key]):
            if key == "chat_template":
                raise CheckpointError(f"{root}: the loaded processor's chat template differs from the "
                                      "folder's chat template file")
            raise CheckpointError(f"{root / SOURCES[key]}: field '{key}' is {value!r} but the loaded "
                                  f"processor uses {got[key]!r}")
    out = dict(got)
    out["chat_template"] = hashlib.sha256(got["chat_template"].encode()).hexdigest()[:12]
    return out
