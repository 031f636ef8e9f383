"""Report writer: PNG figures (matplotlib, Agg backend) plus the same content as markdown and HTML."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CMAP = "gray_r"  # dark ink on white, as the digits are usually shown


def tile(images, ncol: int, pad: int = 1) -> np.ndarray:
    """Arrange (N, H, W) images in a grid with `pad`-pixel white gaps."""
    imgs = np.asarray(images, dtype=np.float32)
    n, h, w = imgs.shape
    nrow = int(np.ceil(n / ncol))
    out = np.zeros((nrow * (h + pad) - pad, ncol * (w + pad) - pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = imgs[i]
    return out


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9, loc="left")


def save_panels(path: Path, panels: dict, ncol: int = 12, title: str | None = None) -> Path:
    """One image-grid panel per entry of `panels` (label -> (N, H, W) images), stacked vertically."""
    grids = {k: tile(v, ncol) for k, v in panels.items()}
    width = max(4.0, ncol * 0.6)
    # Panel heights follow the grids' aspect ratio so no panel is padded with white space.
    inches = [width * g.shape[0] / g.shape[1] + 0.35 for g in grids.values()]
    fig, axes = plt.subplots(len(grids), 1, figsize=(width, sum(inches) + (0.4 if title else 0.1)),
                             gridspec_kw={"height_ratios": inches}, squeeze=False)
    for ax, (label, g) in zip(axes[:, 0], grids.items()):
        _show(ax, g, label)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_interpolations(path: Path, paths: dict) -> Path:
    """Interpolation strips: one panel per model, one row per image pair."""
    panels = {f"{k}: decoded straight line between two test images' codes": np.asarray(v).reshape(-1, *np.asarray(v).shape[2:]) for k, v in paths.items()}
    steps = next(iter(paths.values())).shape[1]
    return save_panels(path, panels, ncol=steps)


def save_curves(path: Path, curves: dict, ylabel: str, title: str, hline: float | None = None, logy: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, ys in curves.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=label, lw=1.4)
    # Legend outside the axes so it never hides the curves.
    if hline is not None:
        ax.axhline(hline, color="gray", ls=":", lw=1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_training_curves(path: Path, histories: dict) -> Path:
    """Loss per epoch, each model normalised by its first epoch so the shapes are comparable."""
    curves = {}
    for k, hist in histories.items():
        ys = np.array([h["loss"] for h in hist], dtype=float)
        curves[k] = ys / ys[0] if len(ys) and ys[0] else ys
    return save_curves(path, curves, "loss / first-epoch loss", "Training curves", logy=True)


def save_bars(path: Path, bars: dict, ylabel: str, title: str, sort: bool = False) -> Path:
    """Side-by-side bar charts (one subplot per entry)."""
    ncol = min(3, len(bars))
    nrow = -(-len(bars) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax in axes.flat[len(bars):]:
        ax.axis("off")
    for ax, (label, vals) in zip(axes.flat, bars.items()):
        v = np.asarray(vals, dtype=float)
        if sort:
            v = np.sort(v)[::-1]
        ax.bar(np.arange(len(v)), v, color="tab:blue")
        ax.set_title(label, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- documents


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def comparison_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table: rows are properties, columns AE / VAE / VQ-VAE."""
    m = results["models"]
    ae, vae, vq = m["ae"], m["vae"], m["vqvae"]
    real = results["real_test_images"]

    def stab(s):
        return f"{'DIVERGED' if s['diverged'] else 'stable'}; tail CV {s['tail_cv']:.3f}; {s['loss_spikes']} loss rises >5%"

    rows = [
        ["latent", ae["latent"], vae["latent"], vq["latent"]],
        ["objective terms", ae["objective"], vae["objective"], vq["objective"]],
        ["how to sample", ae["sampling"], vae["sampling"], vq["sampling"]],
        ["recon MSE (test)", _fmt(ae["recon_mse"]), _fmt(vae["recon_mse"]), _fmt(vq["recon_mse"])],
        ["likelihood bound (-ELBO, nats/image)", "none", _fmt(vae["likelihood_bound_nats"]), f"none for images; AR prior {vq['prior_nll_nats_per_code']:.2f} nats/code held-out (uniform {vq['prior_nll_uniform_nats_per_code']:.2f})"],
        [f"prior-sample confidence (real: {real['confidence']:.3f})", _fmt(ae["prior_sample_confidence"]), _fmt(vae["prior_sample_confidence"]), _fmt(vq["prior_sample_confidence"])],
        [f"prior-sample class entropy, bits (max {real['max_class_entropy_bits']:.2f})", _fmt(ae["prior_sample_class_entropy"]), _fmt(vae["prior_sample_class_entropy"]), _fmt(vq["prior_sample_class_entropy"])],
        [f"prior-sample Frechet distance (real test: {real['frechet_distance']:.2f})", _fmt(ae["prior_sample_frechet"]), _fmt(vae["prior_sample_frechet"]), _fmt(vq["prior_sample_frechet"])],
        [f"prior-sample sharpness (real: {real['sharpness']:.3f})", _fmt(ae["prior_sample_sharpness"]), _fmt(vae["prior_sample_sharpness"]), _fmt(vq["prior_sample_sharpness"])],
        ["prior-sample copy ratio (1 = as novel as held-out data)", _fmt(ae["prior_sample_copy_ratio"]), _fmt(vae["prior_sample_copy_ratio"]), _fmt(vq["prior_sample_copy_ratio"])],
        ["latent usage", "-", f"{vae['active_units']}/{vae['latent_dim']} active units, KL {vae['kl_total']:.2f} nats",
         f"perplexity {vq['codebook_perplexity']:.1f}/{vq['codebook_size']}, {vq['dead_codes']} dead codes"],
        ["training stability", stab(ae["stability"]), stab(vae["stability"]), stab(vq["stability"])],
        ["train time (s)", _fmt(ae["train_s"]), _fmt(vae["train_s"]), f"{vq['train_s']:.2f} (incl. AR prior)"],
    ]
    return ["", "AE", "VAE", "VQ-VAE"], rows


def build_blocks(compare: dict | None, collapse: dict | None, blur: dict | None, codebook: dict | None, images: dict) -> list:
    """The report as a list of blocks: ("h", level, text), ("p", text), ("table", head, rows), ("img", file, caption)."""
    b: list = [("h", 1, "Latent-variable generative models lab: AE vs VAE vs VQ-VAE")]
    if compare:
        d = compare["data"]
        b.append(("p", f"Data: {d['source']}, images {d['shape'][0]}x{d['shape'][1]}, {d['n_train']} train / {d['n_test']} test. "
                       f"Judge: an MLP classifier trained on the real training images (labels: {d['labels']}), test accuracy "
                       f"{d['judge_test_accuracy']:.3f}. Seed {compare['seed']}; comparison took {compare['total_s']:.1f} s."))
        b.append(("h", 2, "Side by side"))
        head, rows = comparison_table(compare)
        b.append(("table", head, rows))
        b.append(("p", "Confidence = mean max class probability the judge gives to 1000 samples (quality); class entropy = entropy "
                       "of the judge's predicted-class histogram (diversity; log2(C) is perfectly balanced); Frechet distance "
                       "between the judge's penultimate features of samples and of the real training images (lower is better)."))
        for key, cap in (("recon", "Reconstructions of test images (top: real)"), ("samples", "Samples from each model's prior"),
                         ("interp", "Interpolations between test images of different classes"), ("curves", "Training curves")):
            if key in images:
                b.append(("img", images[key], cap))
        ev = compare["ae_not_generative"]
        g = ev["gap_ratio"]
        b.append(("h", 2, "Why a plain AE is not a generative model"))
        b.append(("p", "The AE objective only asks that decode(encode(x)) be close to x. Nothing defines a distribution over z, so "
                       "there is no prescribed way to sample and no likelihood. Its codes live wherever training put them "
                       f"(mean up to {ev['ae_code_mean_abs_max']:.2f} in absolute value, per-dim std "
                       f"{ev['ae_code_std_range'][0]:.2f}-{ev['ae_code_std_range'][1]:.2f}, versus 0 and 1 for N(0, I)). "
                       "The VAE's KL term pulls the aggregate posterior onto N(0, I), so sampling the prior is sampling where the decoder was trained."))
        s_std, s_fit = ev["ae_samples_standard_normal"], ev["ae_samples_gaussian_fit"]
        vae = compare["models"]["vae"]
        b.append(("table", ["sampler", "confidence", "class entropy (bits)", "Frechet distance", "gap ratio"], [
            ["AE, z ~ N(0, I)", _fmt(s_std["confidence"]), _fmt(s_std["class_entropy_bits"]), _fmt(s_std["frechet_distance"]), _fmt(g["ae_standard_normal"])],
            ["AE, z ~ Gaussian fitted to its codes (a second, post-hoc model)", _fmt(s_fit["confidence"]), _fmt(s_fit["class_entropy_bits"]), _fmt(s_fit["frechet_distance"]), _fmt(g["ae_gaussian_fit"])],
            ["VAE, z ~ N(0, I)", _fmt(vae["prior_sample_confidence"]), _fmt(vae["prior_sample_class_entropy"]), _fmt(vae["prior_sample_frechet"]), _fmt(g["vae_standard_normal"])],
            ["(held-out codes, AE / VAE)", "", "", "", f"{g['ae_heldout_codes']:.2f} / {g['vae_heldout_codes']:.2f}"],
        ]))
        it = ev["interpolation"]
        b.append(("p", "Gap ratio = median distance from a sampled z to the nearest code the decoder was trained on, divided by the "
                       "median nearest-neighbour spacing of those codes (AE: encoder outputs; VAE: samples of q(z|x)). ~1 means the "
                       "sample lands among training codes; >1 means it falls into a gap. Interpolation (interior confidence / "
                       f"largest frame jump vs even pace): AE {it['ae']['interior_confidence']:.3f} / {it['ae']['max_jump_ratio']:.2f}, "
                       f"VAE {it['vae']['interior_confidence']:.3f} / {it['vae']['max_jump_ratio']:.2f}"
                       + (f", VQ-VAE {it['vqvae']['interior_confidence']:.3f} / {it['vqvae']['max_jump_ratio']:.2f}." if "vqvae" in it else ".")))
    if collapse:
        b.append(("h", 2, "Failure mode: posterior collapse"))
        b.append(("table", ["scenario", "role", "active units", "AU end of warm-up", "KL (nats)", "recon MSE", "-ELBO (nats)"], [
            [r["scenario"], r["role"], f"{r['active_units']}/{r['latent_dim']}", _fmt(r["active_units_end_of_warmup"]), _fmt(r["kl_total"]),
             _fmt(r["recon_mse"]), _fmt(r["neg_elbo_nats"])] for r in collapse["rows"]]))
        b.append(("p", "Summary: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in collapse["summary"].items()) +
                  f". Active unit: Var_x(E[z_u|x]) > 0.01 on test images; {collapse['epochs']} epochs each."))
        if "collapse" in images:
            b.append(("img", images["collapse"], "Active units during training"))
    if blur:
        b.append(("h", 2, "Failure mode: blurry samples (beta and likelihood)"))
        b.append(("table", ["setting", "recon MSE", "recon sharpness", "sample sharpness", "KL", "active units", "confidence", "class entropy", "Frechet"], [
            [r["setting"], _fmt(r["recon_mse"]), _fmt(r["recon_sharpness"]), _fmt(r["sample_sharpness"]), _fmt(r["kl_total"]),
             _fmt(r["active_units"]), _fmt(r["sample_confidence"]), _fmt(r["sample_class_entropy"]), _fmt(r["sample_frechet"])] for r in blur["rows"]]))
        b.append(("p", f"Real test images have sharpness {blur['rows'][0]['real_sharpness']:.3f}. A Gaussian decoder with std sigma "
                       "is an MSE objective with an effective beta of 2*sigma^2."))
        if "blur" in images:
            b.append(("img", images["blur"], "Prior samples per setting"))
    if codebook:
        b.append(("h", 2, "Failure mode: codebook collapse"))
        b.append(("table", ["scenario", "role", "perplexity", "codes used", "dead codes", "restarts", "recon MSE"], [
            [r["scenario"], r["role"], _fmt(r["codebook_perplexity"]), f"{r['codes_used']}/{r['codebook_size']}", _fmt(r["dead_codes"]),
             _fmt(r["restarts"]), _fmt(r["recon_mse"])] for r in codebook["rows"]]))
        b.append(("p", "Summary: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in codebook["summary"].items()) + "."))
        for key, cap in (("codebook_usage", "Code usage (sorted) per scenario"), ("codebook_curves", "Batch codebook perplexity during training")):
            if key in images:
                b.append(("img", images[key], cap))
    return b


def to_markdown(blocks: list) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "table":
            head, rows = blk[1], blk[2]
            esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(esc(h) for h in head) + " |")
            out.append("|" + "---|" * len(head))
            out.extend("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        out.append("")
    return "\n".join(out)


def to_html(blocks: list) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Latent lab report</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
           "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#555}</style></head><body>"]
    for blk in blocks:
        if blk[0] == "h":
            out.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            out.append(f"<p>{e(blk[1])}</p>")
        elif blk[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in blk[1]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in blk[2])
            out.append("</table>")
        elif blk[0] == "img":
            out.append(f"<figure><img src='{e(blk[1])}' alt='{e(blk[2])}'><figcaption>{e(blk[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: str | Path, compare=None, collapse=None, blur=None, codebook=None) -> dict[str, Path]:
    """Write PNGs, report.md, report.html and results.json; each argument is a (results, artefacts) pair or None."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if compare:
        _, art = compare
        images["recon"] = save_panels(out / "reconstructions.png", art["recon"]).name
        images["samples"] = save_panels(out / "prior_samples.png", art["samples"]).name
        images["interp"] = save_interpolations(out / "interpolations.png", art["interp"]).name
        images["curves"] = save_training_curves(out / "training_curves.png", art["histories"]).name
    if collapse:
        res, art = collapse
        images["collapse"] = save_curves(out / "collapse_active_units.png", art["au_curves"], "active units (test)",
                                         "Posterior collapse: active units per epoch").name
    if blur:
        _, art = blur
        images["blur"] = save_panels(out / "blur_samples.png", art["grids"]).name
    if codebook:
        _, art = codebook
        images["codebook_usage"] = save_bars(out / "codebook_usage.png", art["usage"], "uses", "Code usage (sorted)", sort=True).name
        images["codebook_curves"] = save_curves(out / "codebook_perplexity.png", art["perplexity_curves"], "batch perplexity",
                                                "Codebook perplexity during training").name
    blocks = build_blocks(compare and compare[0], collapse and collapse[0], blur and blur[0], codebook and codebook[0], images)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    paths["markdown"].write_text(to_markdown(blocks))
    paths["html"].write_text(to_html(blocks))
    payload = {k: v[0] for k, v in (("compare", compare), ("collapse", collapse), ("blur", blur), ("codebook", codebook)) if v}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths.update({k: out / v for k, v in images.items()})
    return paths
