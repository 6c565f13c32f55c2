#!/usr/bin/env python
"""Parity check: threedsr_ns.rasterize_torch vs gsplat's CUDA rasterization.

Run on a GPU machine with gsplat (1.4.0) installed:

    python scripts/check_rasterizer_parity.py --out parity.json

Both rasterizers run on the same seeded CUDA tensors (the torch one is pure torch,
so it runs on CUDA too): a few hundred Gaussians in front of 2 cameras, two image
sizes (one not a multiple of the 16 px tile), SH degree 0 and 3, "classic" and
"antialiased". Compared: images, alphas, expected depths (max / mean abs diff), radii,
and gradients of a fixed random loss w.r.t. means, quats, scales, opacities, colors
and means2d (relative error ||g_torch - g_gsplat|| / ||g_gsplat||).
Prints a table, writes JSON to --out, exits 1 if a tolerance is exceeded and 2 if
CUDA or gsplat's CUDA kernels are unavailable.
"""

import argparse
import json
import math
import sys
import time

import torch

# Tolerances. gsplat runs float32 with --use_fast_math (__expf) and hard thresholds
# (alpha < 1/255 skipped, compositing stops before T <= 1e-4, integer radii deciding
# tile membership), so a pair sitting on a threshold can flip between the two
# implementations and move one pixel by up to ~1/255 * color. Hence a loose max and a
# tight mean for pixel values. Gradients are sums over many pixels; gsplat's backward
# also recovers transmittance by dividing by (1 - alpha) in float32, so a few 1e-3 of
# relative error is normal and 2e-2 flags real bugs (a wrong convention gives O(1)).
TOL = {
    "image_max_abs": 1e-2,
    "image_mean_abs": 2e-4,
    "alpha_max_abs": 1e-2,
    "alpha_mean_abs": 2e-4,
    "depth_max_abs": 5e-2,  # expected depth in scene units (depths are 2..7), pixels with alpha > 0.1
    "depth_mean_abs": 1e-3,
    "radii_mismatch_frac": 1e-2,  # ceil() of float32 sqrt may differ by one pixel
    "grad_rel": 2e-2,
}
GRAD_KEYS = ["means", "quats", "scales", "opacities", "colors", "means2d"]


def make_case(seed, n, width, height, device):
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    means = torch.stack([(u(n) - 0.5) * 3.0, (u(n) - 0.5) * 2.0, 2.0 + 5.0 * u(n)], -1)
    means[: n // 20, 2] = -1.0  # a few behind the camera: must be culled identically
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g),  # unnormalized: both normalize internally
        "scales": torch.exp(math.log(0.02) + u(n, 3) * math.log(0.2 / 0.02)),
        "opacities": 0.05 + 0.9 * u(n),
        "colors": 0.5 * torch.randn(n, 16, 3, generator=g),
    }
    viewmats = torch.eye(4).repeat(2, 1, 1)
    a = 0.2  # second camera: yawed and shifted
    viewmats[1, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                                        [-math.sin(a), 0, math.cos(a)]])
    viewmats[1, :3, 3] = torch.tensor([0.3, -0.1, 0.5])
    f = 0.9 * width
    Ks = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]).repeat(2, 1, 1)
    weights = {"rgb": u(2, height, width, 3), "alpha": u(2, height, width, 1),
               "depth": u(2, height, width, 1)}
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return to(scene), viewmats.to(device), Ks.to(device), to(weights)


def run_one(fn, scene, viewmats, Ks, width, height, sh_degree, mode, weights):
    p = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    img, alpha, meta = fn(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                          viewmats, Ks, width, height, sh_degree=sh_degree, packed=False,
                          render_mode="RGB+ED", rasterize_mode=mode)
    meta["means2d"].retain_grad()
    # Depth enters the loss only where alpha is clearly > 0 (ED = D / alpha blows up
    # near alpha = 0, which would just amplify threshold flips).
    depth_w = weights["depth"] * (alpha.detach() > 0.1)
    loss = (img[..., :3] * weights["rgb"]).sum() + (alpha * weights["alpha"]).sum() \
        + (img[..., 3:] * depth_w).sum()
    loss.backward()
    torch.cuda.synchronize()
    grads = {k: p[k].grad for k in scene}
    grads["means2d"] = meta["means2d"].grad
    return img.detach(), alpha.detach(), meta["radii"], grads, time.perf_counter() - t0


def compare(seed, n, width, height, sh_degree, mode, device, gsplat_fn, torch_fn):
    scene, viewmats, Ks, weights = make_case(seed, n, width, height, device)
    args = (scene, viewmats, Ks, width, height, sh_degree, mode, weights)
    img_g, alpha_g, radii_g, grads_g, t_g = run_one(gsplat_fn, *args)
    img_t, alpha_t, radii_t, grads_t, t_t = run_one(torch_fn, *args)
    valid = (radii_g > 0) & (radii_t > 0)
    depth_mask = (alpha_g > 0.1) & (alpha_t > 0.1)
    ddiff = (img_g[..., 3:] - img_t[..., 3:]).abs()[depth_mask]
    r = {
        "size": f"{width}x{height}", "sh_degree": sh_degree, "mode": mode,
        "image_max_abs": (img_g[..., :3] - img_t[..., :3]).abs().max().item(),
        "image_mean_abs": (img_g[..., :3] - img_t[..., :3]).abs().mean().item(),
        "alpha_max_abs": (alpha_g - alpha_t).abs().max().item(),
        "alpha_mean_abs": (alpha_g - alpha_t).abs().mean().item(),
        "depth_max_abs": ddiff.max().item() if ddiff.numel() else 0.0,
        "depth_mean_abs": ddiff.mean().item() if ddiff.numel() else 0.0,
        "radii_mismatch_frac": (radii_g != radii_t).float().mean().item(),
        "n_visible": int((radii_g > 0).sum()),
        "ms_gsplat": 1e3 * t_g, "ms_torch": 1e3 * t_t,
    }
    for k in GRAD_KEYS:
        a, b = grads_g[k], grads_t[k]
        if k == "means2d":  # gsplat leaves culled entries uninitialised
            a, b = a[valid], b[valid]
        r[f"grad_rel_{k}"] = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
    r["failures"] = [k for k, v in r.items() if k in TOL and v > TOL[k]] + [
        k for k in r if k.startswith("grad_rel_") and r[k] > TOL["grad_rel"]]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="path of the JSON report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-gaussians", type=int, default=400)
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("check_rasterizer_parity: CUDA is not available; this check needs a GPU with gsplat.")
        sys.exit(2)
    try:
        from gsplat.cuda._backend import _C  # JIT-builds gsplat's kernels on first use
        from gsplat.rendering import rasterization as gsplat_fn
        if _C is None:
            raise ImportError("gsplat's CUDA extension is not built (no nvcc?)")
    except Exception as e:  # noqa: BLE001 - any failure here means "no reference available"
        print(f"check_rasterizer_parity: gsplat CUDA kernels unavailable: {e!r}")
        sys.exit(2)
    import gsplat

    from threedsr_ns.rasterize_torch import rasterization as torch_fn

    device = torch.device("cuda")
    results = []
    for width, height in [(64, 48), (77, 53)]:
        for sh_degree in [0, 3]:
            for mode in ["classic", "antialiased"]:
                seed = args.seed + len(results)
                results.append(compare(seed, args.n_gaussians, width, height, sh_degree, mode,
                                       device, gsplat_fn, torch_fn))

    cols = ["size", "sh_degree", "mode", "image_max_abs", "image_mean_abs", "alpha_max_abs",
            "depth_max_abs", "depth_mean_abs", "radii_mismatch_frac"] + [f"grad_rel_{k}" for k in GRAD_KEYS]
    short = {c: c.replace("grad_rel_", "g_").replace("_abs", "").replace("radii_mismatch_frac", "radii_mis")
             for c in cols}
    print(" ".join(f"{short[c]:>11}" for c in cols))
    for r in results:
        cells = [f"{r[c]:>11.2e}" if isinstance(r[c], float) else f"{str(r[c]):>11}" for c in cols]
        print(" ".join(cells) + ("" if not r["failures"] else "  FAIL: " + ",".join(r["failures"])))
    ok = not any(r["failures"] for r in results)
    report = {"gsplat_version": gsplat.__version__, "torch_version": torch.__version__,
              "device": torch.cuda.get_device_name(), "n_gaussians": args.n_gaussians,
              "tolerances": TOL, "passed": ok, "cases": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"{'PASSED' if ok else 'FAILED'}; report written to {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
