"""Throughput, in-band rate and calibration overhead of the SSIM-calibrated perturbation engine.

On a fixed set of generated 256 x 256 images (the project's synthetic modality generators, the same
draws every run: RGB for dermoscopy, endoscopy, fundus, pathology; grayscale for the others), every type
applicable to the image's modality is calibrated at L1..L5 and its output PNG-encoded, on one core.
Times are CPU time of this process (``time.process_time``), which is far less disturbed than wall time on a
shared machine; BLAS/OpenMP are limited to one thread. The compiled SSIM kernel is loaded (or, in a
fresh checkout, compiled once) before any timing.

Prints: in-band outputs per second, the overall and per-level in-band rate, ms per calibrated output
(RGB and grayscale, including PNG encoding), and the calibration overhead = calibrated time divided by
the time of one plain perturbation (random draws + apply at the final parameter + quantise) + one
uncached SSIM + one PNG encode per output.

Levels are calibrated together (``calibrate_levels``: one random layout and one shared search per
(image, type)). With ``--original DIR`` (a scratch checkout of vfdv52/MedFM-Robust-, never committed)
the original SEG generator runs on the same images of the modalities it has (``--adaptive`` behaviour,
levels 1..5, its own per-output work), our engine is restricted to those modalities (the two take turns,
modality by modality), and the ratio of in-band outputs per second is printed.

    .venv/bin/python benchmarks/perturb_throughput.py [--n-images 3] [--json out.json]
    .venv/bin/python benchmarks/perturb_throughput.py --original /tmp/orig_medfm   # beside the original
    .venv/bin/python benchmarks/perturb_throughput.py --fit-priors   # refit perturb/priors.json

``--fit-priors`` calibrates a disjoint set of images (other indices) and writes, per type, the median
search position of the calibrated parameter at each level (the search's starting points).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from medfm_robust.data.demo import synthetic_sample  # noqa: E402
from medfm_robust.io import encode_png  # noqa: E402
from medfm_robust.perturb import REGISTRY, applicable_types, calibrate_levels  # noqa: E402
from medfm_robust.perturb._common import Context  # noqa: E402
from medfm_robust.perturb.registry import MODALITIES  # noqa: E402
from medfm_robust.perturb.search import DEFAULT_BANDS, in_band  # noqa: E402
from medfm_robust.perturb.ssim import ssim  # noqa: E402
from medfm_robust.perturb.table import encode_outputs  # noqa: E402
from medfm_robust.seeding import rng_for as seed_rng  # noqa: E402
from medfm_robust.seeding import seed_for  # noqa: E402

PRIORS = Path(__file__).resolve().parents[1] / "src" / "medfm_robust" / "perturb" / "priors.json"
BENCH_MODALITIES = [m for m in MODALITIES if m != "oct"]  # oct shares fundus' family and generator

RGB_MODALITIES = ("dermoscopy", "endoscopy", "fundus", "pathology")
IMAGE_SET = "textured"  # set by --set


def textured_image(modality: str, index: int, size: int) -> np.ndarray:
    """A generated 8-bit image with anatomy-like smooth structures and multi-scale texture.

    Smooth shading + 3-6 random elliptical structures + filtered noise at 1, 3 and 8 px (tissue texture)
    + acquisition noise (sigma 2 grey levels); radiological modalities get a dark background outside a
    body ellipse. RGB for dermoscopy, endoscopy, fundus and pathology (a modality-typical tint), else gray.
    """
    from scipy import ndimage

    rng = seed_rng("bench-textured", modality, index)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.45 + 0.15 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.2) * xx + rng.uniform(0.3, 1.2) * yy))
    for _ in range(int(rng.integers(3, 7))):
        cy, cx, ry, rx = (
            rng.uniform(0.2, 0.8),
            rng.uniform(0.2, 0.8),
            rng.uniform(0.05, 0.2),
            rng.uniform(0.05, 0.2),
        )
        img += rng.uniform(-0.25, 0.25) * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1)
    img = ndimage.gaussian_filter(img, 1.5)
    for sigma, amp in ((1.0, 0.05), (3.0, 0.06), (8.0, 0.08)):
        n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
        img += amp * n / n.std()
    if modality not in RGB_MODALITIES and modality != "angiography":
        img *= (((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.38) ** 2) < 1
    if modality in RGB_MODALITIES:
        tint = {
            "dermoscopy": (1.0, 0.75, 0.6),
            "endoscopy": (1.0, 0.55, 0.45),
            "fundus": (0.9, 0.45, 0.2),
            "pathology": (0.85, 0.55, 0.8),
        }[modality]
        img = np.stack([img * t + (1 - t) * 0.3 for t in tint], -1)
    img = img * 255 + rng.normal(0, 2.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bench_image(modality: str, index: int, size: int) -> np.ndarray:
    """One image of the chosen set. ``demo``: the project's synthetic modality generator; 16-bit images
    (its CT stores HU-like values in uint16) are rescaled to 8 bits by their maximum (see README)."""
    if IMAGE_SET == "textured":
        return textured_image(modality, index, size)
    img, _ = synthetic_sample("bench", modality, index, seed=0, size=size)
    if img.dtype == np.uint16:
        img = np.rint(img.astype(np.float64) * (255.0 / max(int(img.max()), 1))).astype(np.uint8)
    return img


def images(
    n: int, size: int, offset: int = 0, modalities: list[str] | None = None
) -> list[tuple[str, int, np.ndarray]]:
    """``n`` generated images per modality (default: all benchmarked ones): (modality, index, image)."""
    out = []
    for mod in modalities or BENCH_MODALITIES:
        for i in range(offset, offset + n):
            out.append((mod, i, bench_image(mod, i, size)))
    return out


def run(
    n: int, size: int, offset: int = 0, types: list[str] | None = None, modalities: list[str] | None = None
) -> dict:
    """Calibrate every applicable type at L1..L5 on the set (one shared search per (image, type),
    :func:`calibrate_levels`); returns per-output records and timings (the time of an (image, type) is
    split evenly over its five outputs)."""
    records = []
    t_total = 0.0
    for mod, idx, img in images(n, size, offset, modalities):
        t0 = time.process_time()
        ctx = Context(img)
        t_ctx = time.process_time() - t0
        names = [t for t in applicable_types(mod) if types is None or t in types]
        t_total += t_ctx
        for name in names:
            seed = seed_for("bench", mod, idx, name)
            t0 = time.process_time()
            results = calibrate_levels(ctx, name, seed=seed)
            pngs = encode_outputs(results)  # as the shards do: one encode per distinct output
            dt = (time.process_time() - t0) / len(results) + t_ctx / (len(names) * len(results))
            t_total += dt * len(results) - t_ctx / len(names)
            for res, png in zip(results, pngs, strict=True):
                lo, hi = res.band
                records.append(
                    {
                        "modality": mod,
                        "index": idx,
                        "type": name,
                        "level": res.level,
                        "rgb": img.ndim == 3,
                        "in_band": res.in_band,
                        "reachable": res.ssim_min_reachable < hi and res.ssim_max_reachable >= lo,
                        "ssim": res.ssim,
                        "param": res.param,
                        "evals": res.n_evals,
                        "seconds": dt,
                        "seed": seed,
                        "png_bytes": len(png),
                        "reason": res.reason,
                    }
                )
    return {"records": records, "seconds": t_total}


# Our modality -> the original SEG generator's modality (x-ray and angiography have none there).
ORIGINAL_MODALITY = {
    "dermoscopy": "DERM",
    "mri": "MRI_BRAIN",
    "ultrasound": "US_BREAST",
    "endoscopy": "ENDOSCOPY",
    "fundus": "OCT",
    "pathology": "PATHOLOGY",
    "ct": "CT_ABDOMEN",
}
ORIGINAL_FILE = "Segmentation/segmentation_generate_perb_all_V10_adpative_efficient.py"


def load_original(root: Path):  # type: ignore[no-untyped-def]
    """The original SEG generator module, run from ``root`` (a scratch checkout of vfdv52/MedFM-Robust-,
    never copied). It imports SimpleITK only to read volumes; a stub stands in when SimpleITK is absent."""
    import importlib.util
    import sys
    import types as pytypes

    if "SimpleITK" not in sys.modules:
        try:
            import SimpleITK  # noqa: F401
        except ImportError:
            sys.modules["SimpleITK"] = pytypes.ModuleType("SimpleITK")
    spec = importlib.util.spec_from_file_location("orig_seg_generator", root / ORIGINAL_FILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_original(module, mod: str, n: int, size: int, tmp: str) -> dict:  # type: ignore[no-untyped-def]
    """The original SEG generator (``--adaptive``: search on a dataset's first image, then its cached
    parameters) on the same ``n`` images of modality ``mod``, levels 1..5, doing its per-output work:
    perturb + SSIM (its own, in ``apply_perturbation_adaptive``) + MSE + ``save_image`` (PNG into the
    folder ``tmp``). One generator object per modality (its per-dataset cache). In band = its recorded
    SSIM in our band (generous: its SSIM min-max normalises, and its saved file differs from what it
    scored).
    """
    orig_mod = ORIGINAL_MODALITY[mod]
    records = []
    total = 0.0
    gen = module.Medical2DPerturbationGenerator(seed=42)
    names = gen._get_base_perturbations() + gen._get_modality_perturbations(orig_mod)
    for idx in range(n):
        img = bench_image(mod, idx, size).astype(np.float32)
        for name in names:
            for level in range(1, 6):
                t0 = time.process_time()
                out, s, _ = gen.apply_perturbation_adaptive(img, orig_mod, name, level)
                gen.compute_mse(img, out)
                gen.save_image(out, f"{tmp}/{mod}_{idx}_{name}_{level}.png")
                dt = time.process_time() - t0
                total += dt
                records.append(
                    {"modality": mod, "index": idx, "type": name, "level": level, "seconds": dt,
                     "in_band": in_band(float(s), level, DEFAULT_BANDS)}
                )  # fmt: skip
    return {"records": records, "seconds": total}


def run_beside_original(root: Path, n: int, size: int, types: list[str] | None) -> tuple[dict, dict]:
    """Ours and the original on the same images, modality by modality in turn (each modality's images
    first through our engine, then through the original), so that a change of machine load during the
    run weighs on both alike. Returns (our run, the original's run) as :func:`run` does."""
    import tempfile

    module = load_original(root)
    ours: dict = {"records": [], "seconds": 0.0}
    orig: dict = {"records": [], "seconds": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for mod in ORIGINAL_MODALITY:
            for acc, part in ((ours, run(n, size, types=types, modalities=[mod])),
                              (orig, run_original(module, mod, n, size, tmp))):  # fmt: skip
                acc["records"] += part["records"]
                acc["seconds"] += part["seconds"]
    return ours, orig


def baseline(records: list[dict], size: int) -> float:
    """Seconds for plain perturbation + SSIM + PNG encode of every record at its final parameter."""
    cache: dict[tuple[str, int], np.ndarray] = {}
    total = 0.0
    for r in records:
        key = (r["modality"], r["index"])
        if key not in cache:
            cache[key] = bench_image(r["modality"], r["index"], size)
        img = cache[key]
        spec = REGISTRY[r["type"]]
        t0 = time.process_time()
        ctx = Context(img, with_reference=False)  # the plain path: no cached SSIM statistics, no search
        rng = np.random.default_rng(r["seed"])
        op = spec.prepare(ctx, rng)
        out = ctx.quantise(op(r["param"]), rng.random(ctx.x.shape, dtype=np.float32))
        ssim(img, out)
        encode_png(out)
        total += time.process_time() - t0
    return total


def summarise(res: dict, base_seconds: float | None) -> dict:
    recs = res["records"]
    n = len(recs)
    inb = sum(r["in_band"] for r in recs)
    per_level = {lv: statistics.mean(r["in_band"] for r in recs if r["level"] == lv) for lv in range(1, 6)}
    by_type: dict[str, list[bool]] = defaultdict(list)
    for r in recs:
        by_type[r["type"]].append(r["in_band"])
    rgb = [r["seconds"] for r in recs if r["rgb"]]
    gray = [r["seconds"] for r in recs if not r["rgb"]]
    reach = [r for r in recs if r.get("reachable", True)]
    out = {
        "outputs": n,
        "in_band_rate": inb / n,
        "unreachable": n - len(reach),
        "in_band_rate_reachable": sum(r["in_band"] for r in reach) / max(len(reach), 1),
        "in_band_per_second": inb / res["seconds"],
        "per_level_in_band": per_level,
        "ms_per_output": 1000 * res["seconds"] / n,
        "ms_per_rgb_output": 1000 * statistics.mean(rgb) if rgb else None,
        "ms_per_gray_output": 1000 * statistics.mean(gray) if gray else None,
        "mean_evals": statistics.mean(r["evals"] for r in recs),
        "worst_types": sorted(((statistics.mean(v), k) for k, v in by_type.items()))[:6],
        "misses": [
            f"{r['modality']}#{r['index']} {r['type']} L{r['level']}: {r['reason']}"
            for r in recs
            if not r["in_band"]
        ],
    }
    if base_seconds is not None:
        out["baseline_ms_per_output"] = 1000 * base_seconds / n
        out["calibration_overhead"] = res["seconds"] / base_seconds
    return out


def fit_priors(n: int, size: int) -> dict[str, list[float]]:
    """Median search position of the calibrated parameter per (type, level) on images ``1000..``."""
    res = run(n, size, offset=1000)
    pos: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in res["records"]:
        if r["in_band"]:
            pos[r["type"]][r["level"]].append(REGISTRY[r["type"]].param.position(r["param"]))
    priors = {}
    for name in REGISTRY:
        vals = [statistics.median(pos[name][lv]) if pos[name][lv] else None for lv in range(1, 6)]
        if all(v is not None for v in vals):
            priors[name] = [round(float(v), 4) for v in np.maximum.accumulate(np.array(vals, float))]
    return priors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=3, help="images per modality (default 3)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--types", help="comma-separated subset of types")
    ap.add_argument(
        "--set",
        choices=["textured", "demo"],
        default="textured",
        dest="image_set",
        help="generated textured images (default) or the data stage's synthetic demo images",
    )
    ap.add_argument("--json", help="also write the summary as JSON here")
    ap.add_argument(
        "--original",
        help="a scratch checkout of vfdv52/MedFM-Robust-: also run its SEG generator on the same images "
        "(the modalities it has) and print the in-band throughput ratio",
    )
    ap.add_argument("--fit-priors", action="store_true", help=f"refit {PRIORS.name} instead of benchmarking")
    args = ap.parse_args()
    global IMAGE_SET
    IMAGE_SET = args.image_set
    if args.fit_priors:
        priors = fit_priors(args.n_images, args.size)
        PRIORS.write_text(json.dumps(priors, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(priors)} priors to {PRIORS}")
        return
    types = args.types.split(",") if args.types else None
    ssim(np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8))  # compile or load the SSIM kernel first
    orig = None
    if args.original:
        res, orig = run_beside_original(Path(args.original), args.n_images, args.size, types)
    else:
        res = run(args.n_images, args.size, types=types)
    summary = summarise(res, baseline(res["records"], args.size))
    report(summary)
    if orig is not None:
        compare(summary, orig)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def report(summary: dict) -> None:
    """Print a :func:`summarise` summary."""
    print(f"outputs                      {summary['outputs']}")
    print(f"in-band rate                 {summary['in_band_rate']:.4f}")
    print(
        f"unreachable outputs          {summary['unreachable']} "
        f"(in-band rate among reachable {summary['in_band_rate_reachable']:.4f})"
    )
    print(
        "in-band rate per level       "
        + " ".join(f"L{k} {v:.3f}" for k, v in summary["per_level_in_band"].items())
    )
    print(f"in-band outputs per second   {summary['in_band_per_second']:.1f}")
    print(f"ms per output (all)          {summary['ms_per_output']:.2f}")
    print(
        f"ms per RGB / gray output     {summary['ms_per_rgb_output']:.2f} / "
        f"{summary['ms_per_gray_output']:.2f}"
    )
    print(f"baseline ms per output       {summary['baseline_ms_per_output']:.2f}")
    print(f"calibration overhead         {summary['calibration_overhead']:.2f}")
    print(f"mean evaluations per output  {summary['mean_evals']:.2f}")
    print(f"worst types                  {summary['worst_types']}")
    for m in summary["misses"][:30]:
        print("  miss:", m)


def _original_rates(records: list[dict]) -> dict:
    """Outputs, in-band rate, ms per output and in-band outputs per second of original-generator records."""
    n = len(records)
    seconds = sum(r["seconds"] for r in records)
    inb = sum(r["in_band"] for r in records)
    return {"outputs": n, "in_band_rate": inb / n, "ms_per_output": 1000 * seconds / n,
            "in_band_per_second": inb / seconds}  # fmt: skip


def compare(summary: dict, orig: dict) -> None:
    """Add the original's numbers and the in-band throughput ratio to ``summary``; print them.

    Also the original's steady state: after a modality's first image it only reuses its cached parameters
    (one perturbation + SSIM + MSE + PNG per output, no search), so its cost per output falls with the
    number of images towards that rate; the ratio against it is the limit for many images per modality.
    """
    o = summary["original"] = _original_rates(orig["records"])
    summary["ratio_in_band_per_second"] = summary["in_band_per_second"] / o["in_band_per_second"]
    print(f"original: outputs {o['outputs']}, in-band rate {o['in_band_rate']:.4f}, ms per output "
          f"{o['ms_per_output']:.2f}, in-band outputs per second {o['in_band_per_second']:.1f}")  # fmt: skip
    print(f"ratio (in-band outputs per second, ours / original)  {summary['ratio_in_band_per_second']:.2f}")
    steady = [r for r in orig["records"] if r["index"] > 0]
    if steady:
        st = summary["original_steady"] = _original_rates(steady)
        summary["ratio_vs_original_steady"] = summary["in_band_per_second"] / st["in_band_per_second"]
        print(f"original after its first image per modality (cached parameters, no search): ms per output "
              f"{st['ms_per_output']:.2f}, in-band rate {st['in_band_rate']:.4f}; ratio against it "
              f"(the limit for many images) {summary['ratio_vs_original_steady']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
