"""Pure-PyTorch 3D Gaussian rasterizer with the call shape of gsplat 1.4.0's
``gsplat.rendering.rasterization``.

gsplat has no CPU kernels, so this module is the CPU fallback (tests, CI). gsplat
stays the GPU path. The math follows gsplat's CUDA kernels (1.4.0):

* projection: quaternion+scale -> 3D covariance -> camera frame -> pinhole Jacobian
  (with gsplat's 1.3x-FOV clamp of x/z, y/z inside J only); ``eps2d`` is added to
  the 2D covariance diagonal; "antialiased" multiplies opacity by
  ``sqrt(det(cov2d) / det(cov2d + eps2d I))``;
* culling: depth outside [near_plane, far_plane], det <= 0, radius <= radius_clip,
  or the radius-square entirely off the image -> ``radii == 0``;
  radius = ceil(3 * sqrt(largest eigenvalue of the blurred cov2d));
* binning: a Gaussian is only evaluated in the ``tile_size`` tiles its
  radius-square touches (exactly gsplat's ``isect_tiles`` rule), depth sorted;
* per pixel (centers at +0.5): alpha = min(0.999, opacity * exp(-sigma)); pairs with
  alpha < 1/255 are skipped; front-to-back compositing stops *before* a Gaussian
  that would bring transmittance to <= 1e-4;
* colors: SH evaluated (own torch code, gsplat's constants) with view directions
  from the camera center, then ``clamp_min(c + 0.5, 0)``; "D" = sum w*z,
  "ED" = D / max(alpha, 1e-10).

Gradients come from plain autograd. ``meta["means2d"]`` ([C, N, 2]) is the tensor
the compositing reads, so ``retain_grad()`` on it yields dL/dmeans2d, as
``gsplat.strategy.DefaultStrategy`` expects. ``absgrad=True`` is implemented
exactly: each tile's per-(pixel, Gaussian) copy of means2d gets a backward hook that
sums |dL_pixel/dmeans2d| over pixels into ``meta["means2d"].absgrad`` (same definition
as gsplat's kernel). Always returns the unpacked ([C, N, ...]) meta layout.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # gsplat skips fainter (pixel, Gaussian) pairs
ALPHA_MAX = 0.999  # cap so 1 - alpha never reaches 0
T_MIN = 1e-4  # a pixel is "done" before transmittance would drop to <= this


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Real SH (Sloan's fast form, gsplat's sign convention). dirs [..., 3], coeffs [..., K, 3] -> [..., 3]."""
    bases = [torch.full_like(dirs[..., 0], 0.2820947917738781)]
    if degree >= 1:  # like gsplat's kernel, degree 0 does not touch (or normalize) dirs
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        bases += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
        bases += [0.5462742152960395 * s1, -1.092548430592079 * z * y,
                  0.9461746957575601 * z2 - 0.3153915652525201,
                  -1.092548430592079 * z * x, 0.5462742152960395 * c1]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        tc = -2.285228997322329 * z2 + 0.4570457994644658
        bases += [-0.5900435899266435 * s2, 1.445305721320277 * z * s1, tc * y,
                  z * (1.865881662950577 * z2 - 1.119528997770346), tc * x,
                  1.445305721320277 * z * c1, -0.5900435899266435 * c2]
    if degree >= 4:
        c3, s3 = x * c2 - y * s2, x * s2 + y * c2
        td = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tc = 3.31161143515146 * z2 - 0.47308734787878
        bases += [0.6258357354491763 * s3, -1.770130769779931 * z * s2, tc * s1, td * y,
                  1.984313483298443 * z2 * (1.865881662950577 * z2 - 1.119528997770346)
                  - 1.006230589874905 * (0.9461746957575601 * z2 - 0.3153915652525201),
                  td * x, tc * c1, -1.770130769779931 * z * c2, 0.6258357354491763 * c3]
    if degree > 4:
        raise ValueError(f"sh_degree {degree} > 4 is not supported")
    basis = torch.stack(bases, dim=-1)  # [..., (degree+1)^2]
    return (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(dim=-2)


def _quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """[N,4] wxyz (any norm), [N,3] -> [N,3,3] covariance R S S^T R^T."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                    dim=-1).reshape(-1, 3, 3)
    M = R * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def _project(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
             radius_clip):
    """EWA projection of all Gaussians into all cameras ([C, N, ...] outputs)."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)
    x, y, depths = means_c.unbind(-1)
    in_range = (depths >= near_plane) & (depths <= far_plane)
    # Culled entries get z = 1 so nothing below is inf/NaN: torch.where passes zero
    # gradients to the unused branch, but 0 * inf would still be NaN.
    z = torch.where(in_range, depths, torch.ones_like(depths))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # gsplat clamps the direction used in J to 1.3x the FOV so off-screen Gaussians
    # near the image plane do not get huge footprints; the mean itself is not clamped.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1)
    J = J.reshape(*z.shape, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d  # low-pass blur: every splat covers ~a pixel
    det = a * c - b * b
    ok = in_range & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # upper triangle of inverse
    compensations = torch.sqrt(torch.clamp(det_orig / det, min=0.0))
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    with torch.no_grad():  # radius is a discrete, non-differentiable culling quantity
        half_tr = 0.5 * (a + c)
        radius = torch.ceil(3.0 * torch.sqrt(half_tr + torch.sqrt(torch.clamp(half_tr**2 - det, min=0.01))))
        mx, my = means2d.unbind(-1)
        valid = ok & (radius > radius_clip) & (mx + radius > 0) & (mx - radius < width) \
            & (my + radius > 0) & (my - radius < height)
        radii = torch.where(valid, radius, torch.zeros_like(radius)).int()
    means2d = torch.where(valid[..., None], means2d, torch.zeros_like(means2d))
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    return radii, means2d, depths, conics, compensations


def _composite(pix, m, conics, opacities, colors, hook_for=None):
    """Front-to-back compositing of K depth-sorted Gaussians over P pixels.

    pix [P,2], m [K,2], conics [K,3], opacities [K], colors [K,D] -> ([P,D], T [P]).
    ``hook_for(cols)`` may return a backward hook for the per-pair means2d of the
    Gaussians ``cols`` (used for absgrad).
    """
    def pair_alpha(m_pp, con, opa):
        dx, dy = (m_pp - pix[:, None, :]).unbind(-1)  # gsplat: delta = mean - pixel
        sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
        return sigma, torch.clamp_max(opa * torch.exp(-sigma), ALPHA_MAX)

    with torch.no_grad():  # the discrete per-pair decisions, without building a graph
        sigma, alpha = pair_alpha(m.unsqueeze(0), conics, opacities)
        use = (sigma >= 0) & (alpha >= ALPHA_MIN)  # gsplat skips fainter pairs
        # Exclusive stop: a Gaussian is used only while the transmittance *after* it
        # stays > T_MIN; T only decreases, so this drops a suffix of each row.
        use &= torch.cumprod(1 - alpha * use, dim=1) > T_MIN
        cols = torch.nonzero(use.any(0)).squeeze(1)
    if cols.numel() == 0:
        return colors.new_zeros(pix.shape[0], colors.shape[-1]), colors.new_ones(pix.shape[0])
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (m, conics, opacities, colors))
    if not needs_graph:  # a render only (guidance, eval, viewer): the decision pass's alphas are the ones to use
        return _blend(alpha[:, cols].masked_fill(~use[:, cols], 0.0), colors[cols])
    # Autograd only over Gaussians that reach some pixel of the tile: the others would
    # have alpha 0 and zero gradient anyway, so dropping them is exact and keeps the
    # saved tensors proportional to the real work (like gsplat's early exit).
    use = use[:, cols]
    m_pp = m[cols].unsqueeze(0).expand(pix.shape[0], -1, -1)  # per-(pixel, Gaussian) means2d
    if hook_for is not None:
        m_pp.register_hook(hook_for(cols))  # sees dL_pixel/dmeans2d per pair (absgrad)
    _, alpha = pair_alpha(m_pp, conics[cols], opacities[cols])
    return _blend(alpha.masked_fill(~use, 0.0), colors[cols])


def _blend(alpha, colors):
    """Front-to-back blending of per-pair alphas [P, K] (depth order, 0 where unused): ([P, D], T [P])."""
    T_after = torch.cumprod(1 - alpha, dim=1)  # (1 - alpha) >= 1e-3: cumprod grad is stable
    T_before = torch.cat([torch.ones_like(T_after[:, :1]), T_after[:, :-1]], dim=1)
    return (alpha * T_before) @ colors, T_after[:, -1]


def _rasterize_camera(means2d, conics, colors, opacities, radii, depths, width, height,
                      tile_size, pair_hook_factory=None):
    """Render one camera tile by tile. Returns colors [H*W, D] and transmittance [H*W]."""
    dev, D = means2d.device, colors.shape[-1]
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ids = torch.nonzero(radii > 0).squeeze(1)
    ids = ids[torch.sort(depths[ids].detach(), stable=True).indices]  # front to back
    m, con, opa, col = means2d[ids], conics[ids], opacities[ids], colors[ids]
    with torch.no_grad():  # gsplat's isect_tiles: tiles [min, max) touched by the radius-square
        tm, tr = m.detach() / tile_size, radii[ids].to(m.dtype)[:, None] / tile_size
        lo = torch.floor(tm - tr).clamp(min=0).long()
        hi = torch.ceil(tm + tr).clamp(min=0).long()  # (tiles past the image never match)
    offs = torch.arange(tile_size, device=dev)
    pix_ids, outs, trans = [], [], []
    for ty in range(tiles_h):
        for tx in range(tiles_w):
            xs = tx * tile_size + offs[: min(tile_size, width - tx * tile_size)]
            ys = ty * tile_size + offs[: min(tile_size, height - ty * tile_size)]
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            pix_ids.append((gy * width + gx).reshape(-1))
            hit = (lo[:, 0] <= tx) & (tx < hi[:, 0]) & (lo[:, 1] <= ty) & (ty < hi[:, 1])
            k = torch.nonzero(hit).squeeze(1)  # stays depth sorted
            pix = torch.stack([gx, gy], -1).reshape(-1, 2).to(m.dtype) + 0.5  # pixel centers
            hook_for = None
            if pair_hook_factory is not None:
                hook_for = lambda cols, gids=ids[k]: pair_hook_factory(gids[cols])  # noqa: E731
            out, T = _composite(pix, m[k], con[k], opa[k], col[k], hook_for)
            outs.append(out)
            trans.append(T)
    # Scatter tiles back to raster order (index_copy is differentiable w.r.t. the source).
    pix_ids = torch.cat(pix_ids)
    img = colors.new_zeros(height * width, D).index_copy(0, pix_ids, torch.cat(outs))
    T = colors.new_ones(height * width).index_copy(0, pix_ids, torch.cat(trans))
    return img, T


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or [(C,) N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = True,  # ignored: meta is always in the unpacked [C, N, ...] layout
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    render_mode: str = "RGB",
    sparse_grad: bool = False,  # ignored: gradients are dense
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    channel_chunk: int = 32,  # ignored: all channels are composited together
    distributed: bool = False,
    camera_model: str = "pinhole",
    covars: Optional[Tensor] = None,  # [N, 3, 3], replaces quats/scales
) -> Tuple[Tensor, Tensor, Dict]:
    """Drop-in for ``gsplat.rendering.rasterization`` (1.4.0) in pure PyTorch.

    Returns ``(render_colors [C,H,W,X], render_alphas [C,H,W,1], meta)``; X = D for
    "RGB", 1 for "D"/"ED", D+1 for "RGB+D"/"RGB+ED" (depth last). ``meta`` holds the
    unpacked gsplat keys used by ``DefaultStrategy`` (``means2d`` [C,N,2] in the graph,
    ``radii`` [C,N] int32, ``width``, ``height``, ``n_cameras``, ``gaussian_ids=None``...).
    Culled entries (radii == 0) of means2d/conics are 0; the tile-binning keys
    (tiles_per_gauss, isect_ids, flatten_ids, isect_offsets) are None. ``absgrad=True``
    fills ``meta["means2d"].absgrad`` during backward (exact, via hooks; a second backward
    through the same graph adds to it). Only the pinhole camera model and
    non-distributed rendering are supported.
    """
    if camera_model != "pinhole" or distributed:
        raise NotImplementedError("rasterize_torch supports camera_model='pinhole', distributed=False only")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")
    N, C = means.shape[0], viewmats.shape[0]
    if covars is None:
        covars = _quat_scale_to_covar(quats, scales)

    radii, means2d, depths, conics, comp = _project(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
    opacities = opacities.expand(C, N)
    if rasterize_mode == "antialiased":
        opacities = opacities * comp

    if sh_degree is None:  # post-activation features [N, D] or [C, N, D]
        colors = colors.expand(C, N, colors.shape[-1])
    else:  # SH coefficients [N, K, 3] or [C, N, K, 3]
        campos = torch.inverse(viewmats)[:, :3, 3]
        dirs = means[None, :, :] - campos[:, None, :]
        colors = eval_sh(sh_degree, dirs, colors.expand(C, N, *colors.shape[-2:]))
        colors = torch.clamp_min(colors + 0.5, 0.0)  # same offset as gsplat / Inria
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    absgrad_buf = None
    if absgrad and torch.is_grad_enabled() and means2d.requires_grad:
        absgrad_buf = torch.zeros_like(means2d.detach()).reshape(C * N, 2)

    def absgrad_hook_factory(gids):  # gids: flat indices c * N + n of one tile's Gaussians
        def hook(grad):  # grad: [P, K, 2] per-pixel contributions
            absgrad_buf.index_add_(0, gids, grad.abs().sum(0))
        return hook  # the hook returns None, so the gradient itself is left unchanged

    images, alphas = [], []
    for cam in range(C):
        factory = None
        if absgrad_buf is not None:
            factory = lambda gids, base=cam * N: absgrad_hook_factory(gids + base)  # noqa: E731
        img, T = _rasterize_camera(means2d[cam], conics[cam], colors[cam], opacities[cam],
                                   radii[cam], depths[cam], width, height, tile_size, factory)
        if backgrounds is not None:
            img = img + T[:, None] * backgrounds[cam]
        images.append(img.reshape(height, width, -1))
        alphas.append((1.0 - T).reshape(height, width, 1))
    render_colors, render_alphas = torch.stack(images), torch.stack(alphas)
    if means2d.requires_grad:  # nothing visible: keep means2d in the graph so its .grad is
        render_colors = render_colors + 0.0 * means2d.sum()  # zeros, as with gsplat
    if render_mode in ("ED", "RGB+ED"):  # expected depth = accumulated depth / alpha
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)

    if absgrad_buf is not None:
        means2d.absgrad = absgrad_buf.view(C, N, 2)  # filled in by the hooks during backward
    tiles_w, tiles_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    meta = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d,
        "depths": depths, "conics": conics, "opacities": opacities,
        "tile_width": tiles_w, "tile_height": tiles_h, "tiles_per_gauss": None,
        "isect_ids": None, "flatten_ids": None, "isect_offsets": None,  # no global bins
        "width": width, "height": height, "tile_size": tile_size, "n_cameras": C,
    }
    return render_colors, render_alphas, meta
