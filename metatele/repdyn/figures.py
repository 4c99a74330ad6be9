"""Figures and tables of the representation-dynamics experiments (`metatele.repdyn.paper`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from metatele.reporting import fmt
from metatele.reporting.plotting import png_bytes, pyplot

if TYPE_CHECKING:
    from metatele.repdyn.paper import Plan

__all__ = ["FIT_OK", "figures", "tables"]

FIT_OK = 0.9  # median R²(H) above which the gain plot shows the fitted A_low and H∞


def figures(rows: list[dict[str, Any]], summary: list[dict[str, Any]], plan: Plan) -> dict[str, bytes]:
    """fits_by_architecture.png, gain_sweep.png and r2_by_layer.png: file name → PNG."""
    plt = pyplot()
    pngs = {}

    variants = [r for r in rows if r["group"] == "variant" and r["seed"] == 0]
    med = {(s["group"], s["model"], s["layer"]): s for s in summary}
    fig, axes = plt.subplots(len(variants), 3, figsize=(12, 2.6 * len(variants)), squeeze=False)
    for i, r in enumerate(variants):
        f_t = np.unique(np.linspace(0, len(r["_data"]) - 1, len(r["_pred"])).round().astype(int))
        m = med[("variant", r["model"], r["layer"])]
        for j, (name, key) in enumerate((("H = ‖Δh‖²", "r2_H"), ("Yd = ‖Δy‖²", "r2_Y"), ("w", "r2_w"))):
            ax = axes[i, j]
            ax.plot(r["_data"][:, j], color="k", lw=2, alpha=0.4, label="network (seed 0)")
            ax.plot(f_t, r["_pred"][:, j], "--", color="C3", label="ODE fit")
            ax.set_title(f"{r['model']} L{r['layer']}: {name}\nR² {r[key]:.3f} (median of {m['n']} seeds "
                         f"{m[key]:.3f})", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    pngs["fits_by_architecture.png"] = png_bytes(fig, dpi=90)

    # the sweep's points, plus the default network (variants[0] at the main layer) as its default-gain point
    default = plan.variants[0].label
    gains = sorted((s for s in summary if s["group"] == "gain" or (s["group"] == "variant" and s["model"] == default)),
                   key=lambda s: s["gain"])
    fig, ax = plt.subplots(figsize=(6, 4))
    g = [s["gain"] for s in gains]
    fitted = [s["r2_H"] >= FIT_OK for s in gains]
    for key, style in (("H0", "o-"), ("H_end", "s-"), ("A_low", "^--"), ("H_inf", "x:")):
        from_fit = key in ("A_low", "H_inf")  # meaningless where the ODE does not fit H
        ax.plot(g, [s[key] if ok or not from_fit else np.nan for s, ok in zip(gains, fitted)], style,
                label=key + " (median over seeds)")
    ax.set_yscale("log")
    ax.set_xlabel("init gain")
    ax.set_ylabel("representational distance")
    ax.set_title(f"lazy (H_end≈H0) vs rich (H_end≈A_low), layer {plan.main_layer}\n"
                 f"A_low, H∞ shown where the fit of H has median R² ≥ {FIT_OK}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    pngs["gain_sweep.png"] = png_bytes(fig, dpi=90)

    profiled = [v.label for v in plan.variants if v.kind in plan.profiled]
    fig, axes = plt.subplots(1, len(profiled), figsize=(6 * len(profiled), 4), squeeze=False)
    for ax, model in zip(axes[0], profiled):
        layers = sorted((s for s in summary if s["model"] == model and s["group"] in ("layer", "variant")),
                        key=lambda s: s["layer"])
        x = [s["layer"] for s in layers]
        for key in ("r2_H", "r2_Y", "r2_w"):
            line, = ax.plot(x, [max(s[key], -1) for s in layers], "o-", label=key + " median")
            ax.plot(x, [max(s[key + "_min"], -1) for s in layers], ":", color=line.get_color(), label=key + " min")
        ax.set_xlabel("hidden layer")
        ax.set_ylabel("R² over seeds (clipped at −1)")
        ax.set_title(f"two-constant ODE fit quality by layer\n{model}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    pngs["r2_by_layer.png"] = png_bytes(fig, dpi=90)
    return pngs


def tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    cols = ("eta_h", "eta_y", "r2_H", "r2_Y", "r2_w", "r2_H_min", "r2_Y_min", "r2_w_min", "H0", "H_end", "A_low",
            "H_inf")
    lines = ["Median over seeds (and minimum R² over seeds):", "",
             ("| group | model | layer | seeds | η_h | η_y | R²(H) | R²(Yd) | R²(w) | min R²(H) | min R²(Yd) "
              "| min R²(w) | H0 | H_end | A_low | H∞ |"), "|" + "---|" * 16]
    lines += [f"| {s['group']} | {s['model']} | {s['layer']} | {s['n']} | " + " | ".join(fmt(s.get(k)) for k in cols)
              + " |" for s in summary]
    lines += ["", "Every fit:", "", "| group | model | seed | layer | η_h | η_y | R²(H) | R²(Yd) | R²(w) | H0 | H_end |",
              "|" + "---|" * 11]
    lines += [f"| {r['group']} | {r['model']} | {r.get('seed', '')} | {r['layer']} | "
              + " | ".join(fmt(r.get(k)) for k in ("eta_h", "eta_y", "r2_H", "r2_Y", "r2_w", "H0", "H_end")) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"
