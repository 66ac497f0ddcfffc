"""Grounding answers: box numbers in a raw output (plain lists, JSON keys, Gemini's ``box_2d``), converted
from the model's box convention to an inclusive pixel box of the stored image."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from medfm_robust.vlm.parsing.common import SPECIAL_TOKENS, Parsed
from medfm_robust.vlm.prompts import check_convention

# A number not glued to a name ("x0", "y1" are labels, not values).
_NUMBER = r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_JSON_KEYS = (
    ("x0", "y0", "x1", "y1"), ("x_min", "y_min", "x_max", "y_max"), ("xmin", "ymin", "xmax", "ymax"),
    ("left", "top", "right", "bottom"), ("x1", "y1", "x2", "y2"),
)


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(_NUMBER, text)]


def _json_box(text: str) -> tuple[list[float], str] | None:
    """A box from a JSON object/list anywhere in ``text`` (keys bbox/box/bbox_2d/box_2d or corner names)."""
    for m in re.finditer(r"[\{\[]", text):
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[m.start():])
        except ValueError:
            continue
        found = _box_in_obj(obj)
        if found is not None:
            return found
    return None


def _box_in_obj(obj: Any) -> tuple[list[float], str] | None:
    if isinstance(obj, list):
        if len(obj) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj):
            return [float(v) for v in obj], "json_list"
        for item in obj:
            found = _box_in_obj(item)
            if found is not None:
                return found
        return None
    if isinstance(obj, dict):
        lower = {str(k).lower(): v for k, v in obj.items()}
        for key in ("box_2d", "bbox_2d", "bbox", "box", "bounding_box", "boundingbox", "coordinates"):
            if key in lower:
                found = _box_in_obj(lower[key])
                if found is not None:
                    return found[0], "json_box_2d" if key == "box_2d" else "json"
        for keys in _JSON_KEYS:
            if all(k in lower for k in keys):
                try:
                    return [float(lower[k]) for k in keys], "json_corners"
                except (TypeError, ValueError):
                    return None
        for value in lower.values():
            if isinstance(value, dict | list):
                found = _box_in_obj(value)
                if found is not None:
                    return found
    return None


def find_box_numbers(text: str) -> tuple[list[float], str] | None:
    """The four box numbers in ``text`` and the form they were found in, or None.

    Forms tried in order: JSON (``{"bbox": [...]}``, ``{"x_min": ..}``, Gemini's ``[{"box_2d": ...}]``),
    ``<box>...</box>`` / ``<|box_start|>...<|box_end|>``, ``[a, b, c, d]``, ``(a, b), (c, d)``,
    ``(a, b, c, d)``, then the first four numbers anywhere.
    """
    raw = text or ""
    found = _json_box(raw)
    if found is not None:
        return found
    m = re.search(r"<(?:box|\|box_start\|)>(.*?)<(?:/box|\|box_end\|)>", raw, re.S | re.I)
    if m and len(nums := _numbers(m.group(1))) >= 4:
        return nums[:4], "box_tag"
    sep = r"\s*[,;\s]\s*"
    m = re.search(rf"\[\s*({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER})\s*\]", raw)
    if m:
        return [float(g) for g in m.groups()], "brackets"
    pair = rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
    m = re.search(rf"{pair}\s*[,\-–to ]*\s*{pair}", raw)
    if m:
        return [float(g) for g in m.groups()], "point_pairs"
    m = re.search(rf"\(\s*({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER})\s*\)", raw)
    if m:
        return [float(g) for g in m.groups()], "parentheses"
    nums = _numbers(raw)
    if len(nums) >= 4:
        return nums[:4], "numbers"
    return None


def box_from_convention(values: Sequence[float], convention: str, width: int, height: int) -> list[float]:
    """Four numbers in ``convention`` -> inclusive pixel box ``[x0, y0, x1, y1]`` (floats).

    Corners are re-ordered when swapped; edges are clamped to the image (``[0, W] x [0, H]``).
    """
    check_convention(convention)
    a, b, c, d = (float(v) for v in values)
    if convention == "pixel":
        ex0, ey0, ex1, ey1 = a, b, c + 1, d + 1
    elif convention == "norm1":
        ex0, ey0, ex1, ey1 = a * width, b * height, c * width, d * height
    elif convention == "norm1000":
        ex0, ey0, ex1, ey1 = a / 1000 * width, b / 1000 * height, c / 1000 * width, d / 1000 * height
    else:  # yxyx1000
        ex0, ey0, ex1, ey1 = b / 1000 * width, a / 1000 * height, d / 1000 * width, c / 1000 * height
    if convention == "pixel" and c < a:
        ex0, ex1 = c, a + 1
    elif ex1 < ex0:
        ex0, ex1 = ex1, ex0
    if convention == "pixel" and d < b:
        ey0, ey1 = d, b + 1
    elif ey1 < ey0:
        ey0, ey1 = ey1, ey0
    ex0, ex1 = min(max(ex0, 0.0), width), min(max(ex1, 0.0), width)
    ey0, ey1 = min(max(ey0, 0.0), height), min(max(ey1, 0.0), height)
    return [round(ex0, 3), round(ey0, 3), round(ex1 - 1, 3), round(ey1 - 1, 3)]


def parse_box(text: str, convention: str, width: int, height: int) -> Parsed:
    """Parse a grounding answer in the model's ``convention`` to an inclusive pixel box (floats).

    A JSON ``box_2d`` key is Gemini's ``[ymin, xmin, ymax, xmax]`` on 0-1000 by definition and is read as
    ``yxyx1000`` whatever ``convention`` says (``method`` records it). Swapped corners are re-ordered and
    the box is clamped to the image; fewer than four numbers is a parse failure.
    """
    check_convention(convention)
    found = find_box_numbers(SPECIAL_TOKENS.sub(" ", text or ""))
    if found is None:
        return Parsed(False, None, "", "no_box" if (text or "").strip() else "empty")
    values, form = found
    if form == "json_box_2d" and convention != "yxyx1000":
        form = "json_box_2d(yxyx1000)"
        convention = "yxyx1000"  # Gemini's box_2d is [ymin, xmin, ymax, xmax] / 1000 by definition
    box = box_from_convention(values, convention, width, height)
    text_out = "[" + ", ".join(f"{v:g}" for v in box) + "]"
    return Parsed(True, box, text_out, form)
