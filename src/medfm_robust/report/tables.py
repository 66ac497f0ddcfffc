"""The paper's tables, built from hierarchical cells and written as CSV, Markdown and LaTeX (booktabs).

A :class:`Table` holds *cells* in long form (row keys, a column label, ``mean``, ``ci_low``, ``ci_high``,
``n``) plus optional plain per-row columns (``extra``: rank, category, trainable parameters, ...). The CSV
is wide with four columns per label (``<label>``, ``<label>_ci_low``, ``<label>_ci_high``, ``<label>_n``);
Markdown and LaTeX show each cell as ``mean [ci_low, ci_high] n=N``, followed by the number of perturbed
outputs left out of it when there are any (``(-3 out of band, -5 unreachable)``; CSV columns
``<label>_n_out_of_band`` and ``<label>_n_unreachable``).

Honest cells: cells may carry ``n_images`` (distinct images, the bootstrap's resampling unit; CSV column
``<label>_n_images``); a cell with fewer than the table's ``min_images`` images keeps its mean and n but
loses its interval everywhere (CSV, Markdown, LaTeX, figures) and shows ``[k images, no CI]`` instead.

Training seeds: cells may carry ``seed_sd`` (the seed-to-seed SD of the cell, see
:func:`~medfm_robust.report.aggregate.hierarchical_mean`; CSV column ``<label>_seed_sd``); the mean is the
mean over seeds and, when there are several, the SD follows the image-level interval: ``0.034 [0.021,
0.047] ±0.006 sd(seeds) n=120``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medfm_robust.io import write_text_atomic
from medfm_robust.report.aggregate import EXCLUDED
from medfm_robust.report.palette import MODEL_LABELS, TASK_LABELS, label

CELL_FIELDS = ("mean", "ci_low", "ci_high", "n")
#: Optional cell field: distinct images behind the cell (see the module docstring).
IMAGES_FIELD = "n_images"
#: Optional cell field: seed-to-seed standard deviation (see the module docstring).
SEED_SD_FIELD = "seed_sd"


@dataclass
class Table:
    """One paper table.

    Attributes:
        name: file stem (``paths.table``).
        title: one-line title (Markdown heading, LaTeX caption).
        row_keys: columns identifying a row (e.g. ``model``, ``strategy``), in display order.
        cells: long frame with ``row_keys``, ``column`` and :data:`CELL_FIELDS`.
        columns: column labels in display order.
        rows: the row-key frame in display order (defaults to the sorted unique rows of ``cells``).
        extra: per-row plain columns (joined on ``row_keys``), shown after the row keys.
        digits: decimals of the cell means.
        min_images: cells with fewer distinct images (``n_images``) get no interval (0: no rule).
    """

    name: str
    title: str
    row_keys: list[str]
    cells: pd.DataFrame
    columns: list[str]
    rows: pd.DataFrame | None = None
    extra: pd.DataFrame | None = None
    digits: int = 3
    notes: list[str] = field(default_factory=list)
    formatters: dict[str, Callable[[object], str]] = field(default_factory=dict)
    min_images: int = 0

    def __post_init__(self) -> None:
        if self.min_images and IMAGES_FIELD in self.cells.columns:
            few = pd.to_numeric(self.cells[IMAGES_FIELD], errors="coerce") < self.min_images
            self.cells = self.cells.assign(
                ci_low=self.cells["ci_low"].mask(few), ci_high=self.cells["ci_high"].mask(few)
            )

    def row_frame(self) -> pd.DataFrame:
        """The rows in display order (row keys only)."""
        if self.rows is not None:
            return self.rows[self.row_keys].reset_index(drop=True)
        return self.cells[self.row_keys].drop_duplicates().sort_values(self.row_keys).reset_index(drop=True)

    def wide(self) -> pd.DataFrame:
        """Wide numeric frame: row keys, extra columns, then mean/CI/n columns per label."""
        out = self.row_frame()
        if self.extra is not None and len(self.extra.columns) > len(self.row_keys):
            out = out.merge(self.extra, on=self.row_keys, how="left")
        imgs = [IMAGES_FIELD] if IMAGES_FIELD in self.cells.columns else []
        excl = [c for c in EXCLUDED if c in self.cells.columns]
        sd = [SEED_SD_FIELD] if SEED_SD_FIELD in self.cells.columns else []
        for col in self.columns:
            sub = self.cells[self.cells["column"] == col][[*self.row_keys, *CELL_FIELDS, *sd, *imgs, *excl]]
            sub = sub.rename(
                columns={
                    "mean": col,
                    "ci_low": f"{col}_ci_low",
                    "ci_high": f"{col}_ci_high",
                    "n": f"{col}_n",
                    **{c: f"{col}_{c}" for c in (*sd, *imgs, *excl)},
                }
            )
            out = out.merge(sub, on=self.row_keys, how="left")
            for c in ("n", *imgs, *excl):
                out[f"{col}_{c}"] = out[f"{col}_{c}"].astype("Int64")
        return out

    def display(self) -> pd.DataFrame:
        """String frame for Markdown/LaTeX: labels prettified, cells formatted with CI and n."""
        wide = self.wide()
        out = pd.DataFrame()
        for key in self.row_keys:
            out[key.replace("_", " ")] = wide[key].map(lambda v: label(str(v)))
        if self.extra is not None:
            for col in self.extra.columns:
                if col not in self.row_keys:
                    out[col.replace("_", " ")] = wide[col].map(self.formatters.get(col, _plain))
        for col in self.columns:
            head = label(col) if col in MODEL_LABELS or col in TASK_LABELS else col
            few = wide.get(f"{col}_{IMAGES_FIELD}", pd.Series(pd.NA, index=wide.index, dtype="Int64"))
            few = few.where((few < self.min_images).fillna(False).astype(bool))
            zeros = pd.Series(0, index=wide.index)
            oob = wide.get(f"{col}_n_out_of_band", zeros)
            unr = wide.get(f"{col}_n_unreachable", zeros)
            sds = wide.get(f"{col}_{SEED_SD_FIELD}", pd.Series(float("nan"), index=wide.index))
            out[head] = [
                format_cell(
                    m, lo, hi, n, self.digits, too_few_images=k, out_of_band=o, unreachable=u, seed_sd=sd
                )
                for m, lo, hi, n, k, o, u, sd in zip(
                    wide[col],
                    wide[f"{col}_ci_low"],
                    wide[f"{col}_ci_high"],
                    wide[f"{col}_n"],
                    few,
                    oob,
                    unr,
                    sds,
                    strict=True,
                )
            ]
        return out


def _plain(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_cell(
    mean: float,
    lo: float,
    hi: float,
    n: object,
    digits: int = 3,
    *,
    too_few_images: object = None,
    out_of_band: object = 0,
    unreachable: object = 0,
    seed_sd: object = None,
) -> str:
    """``0.034 [0.021, 0.047] n=120``; ``–`` for a missing cell; the CI is left out when not computed.

    ``seed_sd`` (None/NaN for one training seed) follows the interval: ``0.034 [0.021, 0.047] ±0.006
    sd(seeds) n=120``.

    ``too_few_images`` (an image count, or None/NA) marks a cell under the table's ``min_images``: no
    interval, ``0.034 [2 images, no CI] n=12``. Perturbed outputs left out of the cell are stated after
    it: ``n=120 (-3 out of band, -5 unreachable)``.
    """
    excl = [
        f"-{int(k)} {what}"
        for k, what in ((out_of_band, "out of band"), (unreachable, "unreachable"))
        if k is not None and not pd.isna(k) and int(k) > 0
    ]
    if mean is None or pd.isna(mean):
        return "–" + (f" ({', '.join(excl)})" if excl else "")
    text = f"{mean:.{digits}f}"
    if too_few_images is not None and not pd.isna(too_few_images):
        text += f" [{int(too_few_images)} images, no CI]"
    elif not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if seed_sd is not None and not pd.isna(seed_sd):
        text += f" ±{float(seed_sd):.{digits}f} sd(seeds)"
    if n is not None and not pd.isna(n):
        text += f" n={int(n)}"
    if excl:
        text += f" ({', '.join(excl)})"
    return text


def format_params(n: float | None) -> str:
    """Parameter counts as ``1.23M`` / ``45.6K`` / ``789``; ``–`` when unknown."""
    if n is None or pd.isna(n):
        return "–"
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{int(n)}"


def to_markdown(table: Table) -> str:
    """GitHub Markdown: a heading, the table, then the notes."""
    frame = table.display()
    header = "| " + " | ".join(frame.columns) + " |"
    align = (
        "|" + "|".join(":--" if i < len(table.row_keys) else "--:" for i in range(len(frame.columns))) + "|"
    )
    lines = [f"### {table.title}", "", header, align]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    if frame.empty:
        lines.append("| " + " | ".join("–" for _ in frame.columns) + " |")
    lines += ["", *table.notes] if table.notes else []
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("–", "--")


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (``\\toprule``/``\\midrule``/``\\bottomrule``)."""
    frame = table.display()
    spec = "l" * len(table.row_keys) + "r" * (len(frame.columns) - len(table.row_keys))
    buf = io.StringIO()
    buf.write("% requires \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n\\scriptsize\n")
    buf.write(f"\\caption{{{latex_escape(table.title)}}}\n\\label{{tab:{table.name}}}\n")
    buf.write(f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n")
    buf.write(" & ".join(latex_escape(c) for c in frame.columns) + " \\\\\n\\midrule\n")
    for row in frame.itertuples(index=False):
        buf.write(" & ".join(latex_escape(v) for v in row) + " \\\\\n")
    buf.write("\\bottomrule\n\\end{tabular}\n")
    for note in table.notes:
        buf.write(f"\\par\\smallskip{{\\footnotesize {latex_escape(note)}}}\n")
    buf.write("\\end{table}\n")
    return buf.getvalue()


def write_table(table: Table, csv_path: str | Path, md_path: str | Path, tex_path: str | Path) -> None:
    """Write the CSV (wide, numeric), Markdown and LaTeX files atomically."""
    write_text_atomic(csv_path, table.wide().to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    write_text_atomic(md_path, to_markdown(table))
    write_text_atomic(tex_path, to_latex(table))


def cells_from(
    stats: pd.DataFrame, row_keys: Sequence[str], column: str | Sequence[str], fmt: str = "{}"
) -> pd.DataFrame:
    """Turn :func:`~medfm_robust.report.aggregate.hierarchical_mean` output into table cells.

    ``column`` is either a fixed label or the name(s) of result columns whose values, formatted with
    ``fmt``, become the label (e.g. ``"level"`` with ``"L{}"``).
    """
    out = stats.copy()
    if isinstance(column, str) and column not in stats.columns:
        out["column"] = column
    else:
        cols = [column] if isinstance(column, str) else list(column)
        out["column"] = [fmt.format(*vals) for vals in out[cols].itertuples(index=False)]
    extra = [
        *([SEED_SD_FIELD] if SEED_SD_FIELD in out.columns else []),
        *([IMAGES_FIELD] if IMAGES_FIELD in out.columns else []),
        *(c for c in EXCLUDED if c in out.columns),
    ]
    return out[[*row_keys, "column", *CELL_FIELDS, *extra]]


def long_cells(tables: Sequence[Table]) -> pd.DataFrame:
    """All tables' cells in one long frame with a ``table`` column (read by the figure code)."""
    frames = []
    for t in tables:
        c = t.cells.copy()
        c.insert(0, "table", t.name)
        if t.extra is not None and not t.extra.empty:
            c = c.merge(t.extra, on=t.row_keys, how="left")
        for key in ("model", "strategy", "dataset", "task", "perturbation", "category", "level"):
            if key not in c.columns:
                c[key] = pd.NA
        frames.append(c)
    if not frames:
        return pd.DataFrame(columns=["table", "column", *CELL_FIELDS])
    out = pd.concat(frames, ignore_index=True)
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].astype("string")
    return out
