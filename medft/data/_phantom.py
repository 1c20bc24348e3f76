"""Chest-radiograph phantoms: a small analytic model of a frontal chest X-ray in numpy.

Anatomy is described in a *body frame* (``a`` runs from the image's left to its right,
``b`` from head to feet, both roughly in [-1, 1]) and sampled on the pixel grid through a
:class:`Pose` (scale, rotation, shift). A patient therefore keeps the same anatomy across
images while position, exposure and noise change. Values are *density* (bright = dense, the
way a radiologist sees the film); :func:`render` adds an exposure gradient and quantum-like
noise and returns the display image in [0, 1].

Display convention (PA): the patient's right lung is on the image's left (``a < 0``), the
heart bulges towards the image's right, and the right hemidiaphragm sits higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FINDING_KINDS: tuple[str, ...] = ("nodule", "opacity", "effusion")
PATIENT_RIGHT = -1  # image left in PA display
PATIENT_LEFT = 1

_F = np.float32
_N_RIBS = 10


@dataclass(frozen=True)
class Anatomy:
    """Patient-level body shape: the same for every image of one patient."""

    thorax_half_width: float
    thorax_half_height: float
    soft_tissue: float
    lung_air: float
    lung_offset: float
    lung_half_width: float
    lung_half_height: float
    lung_centre_b: float
    dome_right: float
    dome_left: float
    dome_curvature: float
    heart_scale: float
    heart_shift: float
    heart_density: float
    rib_top: float
    rib_spacing: float
    rib_curve: float
    rib_density: float
    clavicle_density: float
    texture: tuple[tuple[float, float, float, float], ...]
    vessel_fans: tuple[tuple[int, float], tuple[int, float]]
    vessel_density: float

    def dome_top(self, side: int) -> float:
        """Height (``b``) of the hemidiaphragm's highest point on one side."""
        return self.dome_right if side == PATIENT_RIGHT else self.dome_left


@dataclass(frozen=True)
class Pose:
    """Image-level placement of the body on the detector."""

    scale: float
    angle: float
    shift_u: float
    shift_v: float


@dataclass(frozen=True)
class Exposure:
    """Image-level exposure: display range, contrast curve, noise level and gradient."""

    lo: float
    hi: float
    gamma: float
    noise: float
    gradient: tuple[float, float, float]


@dataclass(frozen=True)
class Finding:
    """One abnormality in body coordinates.

    ``a, b`` is the centre (for an effusion: the fluid level at the lung's centre line),
    ``radius`` the size in body units, ``contrast`` the density it adds (for an effusion:
    the fraction of lung air the fluid replaces). ``lobes`` shape an opacity, ``tilt`` is
    an effusion's meniscus rise towards the chest wall.
    """

    kind: str
    side: int
    a: float
    b: float
    radius: float
    contrast: float
    lobes: tuple[tuple[float, float, float], ...] = ()
    tilt: float = 0.0


@dataclass(frozen=True)
class Rendering:
    """A rendered image and, per finding, the density it added (pixel grid, no noise)."""

    image: np.ndarray
    contributions: tuple[np.ndarray, ...]


# ----------------------------------------------------------------------------- sampling


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's body shape (sizes, densities, rib layout, lung texture)."""
    n_waves = 10
    angles = rng.uniform(0, math.pi, n_waves)
    freqs = rng.uniform(14.0, 40.0, n_waves)
    texture = tuple(
        (
            float(f * math.cos(t)),
            float(f * math.sin(t)),
            float(p),
            float(amp),
        )
        for f, t, p, amp in zip(
            freqs,
            angles,
            rng.uniform(0, 2 * math.pi, n_waves),
            rng.uniform(0.002, 0.006, n_waves),
            strict=True,
        )
    )
    dome_right = float(rng.uniform(0.36, 0.48))
    return Anatomy(
        thorax_half_width=float(rng.uniform(0.8, 0.92)),
        thorax_half_height=float(rng.uniform(1.0, 1.12)),
        soft_tissue=float(rng.uniform(0.45, 0.55)),
        lung_air=float(rng.uniform(0.2, 0.28)),
        lung_offset=float(rng.uniform(0.33, 0.39)),
        lung_half_width=float(rng.uniform(0.25, 0.3)),
        lung_half_height=float(rng.uniform(0.68, 0.78)),
        lung_centre_b=float(rng.uniform(-0.05, 0.05)),
        dome_right=dome_right,
        dome_left=dome_right + float(rng.uniform(0.02, 0.08)),
        dome_curvature=float(rng.uniform(2.0, 3.5)),
        heart_scale=float(np.clip(rng.normal(1.0, 0.09), 0.8, 1.3)),
        heart_shift=float(rng.uniform(0.08, 0.14)),
        heart_density=float(rng.uniform(0.1, 0.16)),
        rib_top=float(rng.uniform(-0.82, -0.72)),
        rib_spacing=float(rng.uniform(0.12, 0.145)),
        rib_curve=float(rng.uniform(0.35, 0.6)),
        rib_density=float(rng.uniform(0.04, 0.08)),
        clavicle_density=float(rng.uniform(0.06, 0.12)) if rng.random() < 0.85 else 0.0,
        texture=texture,
        vessel_fans=(
            (int(rng.integers(9, 15)), float(rng.uniform(0, 2 * math.pi))),
            (int(rng.integers(9, 15)), float(rng.uniform(0, 2 * math.pi))),
        ),
        vessel_density=float(rng.uniform(0.04, 0.08)),
    )


def sample_pose(rng: np.random.Generator) -> Pose:
    """Draw patient positioning: about ±10% scale, ±5° rotation, ±6% shift."""
    return Pose(
        scale=float(rng.uniform(0.84, 1.02)),
        angle=float(np.deg2rad(rng.uniform(-5.0, 5.0))),
        shift_u=float(rng.uniform(-0.06, 0.06)),
        shift_v=float(rng.uniform(-0.06, 0.06)),
    )


def sample_exposure(rng: np.random.Generator) -> Exposure:
    """Draw exposure: display range, contrast curve (gamma), noise level, slow gradient."""
    return Exposure(
        lo=float(rng.uniform(-0.08, 0.04)),
        hi=float(rng.uniform(1.0, 1.25)),
        gamma=float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)))),
        noise=float(math.exp(rng.uniform(math.log(0.006), math.log(0.02)))),
        gradient=(
            float(rng.uniform(-0.05, 0.05)),
            float(rng.uniform(-0.05, 0.05)),
            float(rng.uniform(-0.04, 0.04)),
        ),
    )


def sample_finding(rng: np.random.Generator, kind: str, anatomy: Anatomy) -> Finding:
    """Draw one finding of ``kind`` placed inside a lung field.

    Difficulty is spread on purpose: nodules are log-uniform in radius (about 5–12 px at
    256 px) and in contrast (0.1–0.3 density, against noise of 0.006–0.02 and ribs of
    0.05–0.1), so the smallest, faintest ones are hard to see while most are learnable
    from a few hundred images (the quickstart's budget). Smaller, fainter ranges made
    even an ImageNet-pretrained model stay near chance at that data size.
    """
    if kind == "nodule":
        radius = _log_uniform(rng, 0.045, 0.11)
        side, a, b = _point_in_lung(rng, anatomy, margin=radius)
        return Finding(kind, side, a, b, radius, _log_uniform(rng, 0.1, 0.3))
    if kind == "opacity":
        radius = float(rng.uniform(0.07, 0.17))
        side, a, b = _point_in_lung(rng, anatomy, margin=0.5 * radius)
        n_lobes = int(rng.integers(1, 4))
        lobes = [(0.0, 0.0, 1.0)]
        for _ in range(n_lobes):
            angle = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(0.2, 0.6) * radius
            lobes.append((dist * math.cos(angle), dist * math.sin(angle), rng.uniform(0.5, 0.9)))
        contrast = _log_uniform(rng, 0.1, 0.3)
        return Finding(kind, side, a, b, radius, contrast, tuple(lobes))
    if kind == "effusion":
        side = PATIENT_RIGHT if rng.random() < 0.5 else PATIENT_LEFT
        # Level at the lung's centre line, relative to the dome top: positive = below it, so
        # only the lateral costophrenic recess fills (a blunted angle, the subtle case).
        depth = float(rng.uniform(-0.35, 0.0))
        return Finding(
            kind,
            side,
            side * anatomy.lung_offset,
            anatomy.dome_top(side) + depth,
            radius=0.0,
            contrast=float(rng.uniform(0.6, 1.0)),
            tilt=float(rng.uniform(0.04, 0.14)),
        )
    raise ValueError(f"unknown finding kind {kind!r}; expected one of {FINDING_KINDS}")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _point_in_lung(
    rng: np.random.Generator, anatomy: Anatomy, margin: float
) -> tuple[int, float, float]:
    """A random point well inside either lung (and clear of the heart) by ``margin``."""
    offsets = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=float)
    for _ in range(200):
        side = PATIENT_RIGHT if rng.random() < 0.5 else PATIENT_LEFT
        a = side * anatomy.lung_offset + rng.uniform(-1, 1) * anatomy.lung_half_width
        b = anatomy.lung_centre_b + rng.uniform(-1, 1) * anatomy.lung_half_height
        pts_a = a + margin * offsets[:, 0]
        pts_b = b + margin * offsets[:, 1]
        inside = _aerated_lung(anatomy, pts_a, pts_b, side)
        if inside[0] > 0.95 and inside[1:].min() > 0.5:
            return side, float(a), float(b)
    # A point that is always inside: the middle of the right lung, above the dome.
    return PATIENT_RIGHT, -anatomy.lung_offset, anatomy.lung_centre_b - 0.2


# ----------------------------------------------------------------------------- geometry


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _inside(q: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``q > 0`` with a transition ``edge`` wide."""
    return _smoothstep(q / edge + 0.5)


def _ellipse_q(
    a: np.ndarray, b: np.ndarray, ca: float, cb: float, ra: float, rb: float
) -> np.ndarray:
    """1 - normalised radius²: 1 at the centre, 0 on the outline, negative outside."""
    return 1.0 - ((a - ca) / ra) ** 2 - ((b - cb) / rb) ** 2


def _thickness(q: np.ndarray) -> np.ndarray:
    """Projected thickness of an ellipsoid (profile of a ball seen through)."""
    return np.sqrt(np.clip(q, 0.0, None))


def _lung_field(anatomy: Anatomy, a: np.ndarray, b: np.ndarray, side: int) -> np.ndarray:
    ca = side * anatomy.lung_offset
    q = _ellipse_q(
        a, b, ca, anatomy.lung_centre_b, anatomy.lung_half_width, anatomy.lung_half_height
    )
    dome = anatomy.dome_top(side) + anatomy.dome_curvature * (a - ca) ** 2
    return _inside(q, 0.1) * _inside(dome - b, 0.025)


def _heart(anatomy: Anatomy, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ra = 0.36 * anatomy.heart_scale
    rb = 0.28 * (0.5 + 0.5 * anatomy.heart_scale)
    cb = anatomy.dome_left - 0.7 * rb
    return _ellipse_q(a, b, anatomy.heart_shift, cb, ra, rb)


def _mediastinum(anatomy: Anatomy, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = 0.1 + 0.05 * np.clip((b + 0.6) / 0.6, 0.0, 1.0)
    band = _inside(width - np.abs(a - 0.01), 0.04) * _inside(anatomy.dome_left - 0.1 - b, 0.1)
    knob = _inside(_ellipse_q(a, b, 0.12, -0.32, 0.075, 0.07), 0.5)
    return np.maximum(band, knob)


def _aerated_lung(anatomy: Anatomy, a: np.ndarray, b: np.ndarray, side: int) -> np.ndarray:
    """Lung field of one side with heart and mediastinum cut away (what shows as dark)."""
    lung = _lung_field(anatomy, a, b, side)
    return lung * (1.0 - _inside(_heart(anatomy, a, b), 0.12)) * (1.0 - _mediastinum(anatomy, a, b))


def _segment_distance(
    a: np.ndarray, b: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    da, db = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((a - p0[0]) * da + (b - p0[1]) * db) / (da * da + db * db), 0.0, 1.0)
    return np.hypot(a - (p0[0] + t * da), b - (p0[1] + t * db))


def _ribs(anatomy: Anatomy, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Posterior ribs: curved bands that fall away laterally, with brighter cortical edges."""
    ax = np.abs(a)
    phase = (b - anatomy.rib_top - anatomy.rib_curve * ax * ax - 0.1 * ax) / anatomy.rib_spacing
    index = np.floor(phase)
    frac = np.abs(phase - index - 0.5)
    band = _inside(0.2 - frac, 0.08) * (0.75 + 1.5 * frac)
    cage = _inside(_ellipse_q(a, b, 0.0, 0.0, 0.93 * anatomy.thorax_half_width, 0.85), 0.1)
    valid = (index >= 0) & (index < _N_RIBS)
    return band * cage * valid * _inside(ax - 0.06, 0.03)


def _clavicles(anatomy: Anatomy, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    for side in (PATIENT_RIGHT, PATIENT_LEFT):
        dist = _segment_distance(a, b, (side * 0.07, -0.74), (side * 0.62, -0.88))
        out = np.maximum(out, _thickness(1.0 - (dist / 0.038) ** 2))
    return out


def _superellipse_q(
    a: np.ndarray, b: np.ndarray, cb: float, ra: float, rb: float, power: float
) -> np.ndarray:
    """Like :func:`_ellipse_q` for a squarer outline (shoulders), ``power`` > 2."""
    return 1.0 - np.abs(a / ra) ** power - np.abs((b - cb) / rb) ** power


def _vessels(a: np.ndarray, b: np.ndarray, anatomy: Anatomy) -> np.ndarray:
    """Pulmonary vessels: streaks radiating from each hilum, fading towards the periphery."""
    out = np.zeros_like(a)
    for side, (count, phase) in zip(
        (PATIENT_RIGHT, PATIENT_LEFT), anatomy.vessel_fans, strict=True
    ):
        da, db = a - side * 0.16, b + 0.05
        dist = np.sqrt(da * da + db * db)
        spokes = (0.5 + 0.5 * np.cos(count * np.arctan2(db, da) + phase + 6.0 * dist)) ** 6
        out += spokes * np.exp(-dist / 0.3) + np.exp(-(dist * dist) / (2 * 0.06**2))
    return out


@dataclass(frozen=True)
class _Chest:
    """The normal chest on a pixel grid, plus what findings need: lung fields, air depth."""

    density: np.ndarray
    air_depth: np.ndarray
    lungs: dict[int, np.ndarray]


def _chest(anatomy: Anatomy, a: np.ndarray, b: np.ndarray) -> _Chest:
    """Density of the normal chest (soft tissue, lungs, heart, mediastinum, bones)."""
    body_q = _superellipse_q(a, b, 0.08, anatomy.thorax_half_width, anatomy.thorax_half_height, 2.6)
    body = _thickness(body_q) * _inside(body_q, 0.05)
    neck = 0.8 * _inside(0.2 - np.abs(a), 0.05) * _inside(-0.7 - b, 0.1)
    tissue = np.maximum(body, neck)

    heart_q = _heart(anatomy, a, b)
    mediastinum = _mediastinum(anatomy, a, b)
    lung_right = _aerated_lung(anatomy, a, b, PATIENT_RIGHT)
    lung_left = _aerated_lung(anatomy, a, b, PATIENT_LEFT)
    lungs = lung_right + lung_left
    air_depth = anatomy.lung_air * (0.6 + 0.4 * body)

    texture = np.zeros_like(a)
    for ka, kb, phase, amp in anatomy.texture:
        texture += amp * np.cos(ka * a + kb * b + phase)
    vertebrae = 0.75 + 0.25 * np.cos(2 * math.pi * b / 0.115)
    spine = _inside(0.07 - np.abs(a), 0.02) * vertebrae * _inside(body_q, 0.1)
    trachea = _inside(0.025 - np.abs(a), 0.012) * _inside(-0.36 - b, 0.05)
    above_diaphragm = _inside(max(anatomy.dome_left, anatomy.dome_right) + 0.12 - b, 0.15)

    density = (
        anatomy.soft_tissue * tissue
        - air_depth * lungs
        + lungs * (texture + anatomy.vessel_density * _vessels(a, b, anatomy))
        + anatomy.heart_density * _thickness(heart_q) * _inside(anatomy.dome_left - b, 0.08)
        + 0.08 * mediastinum
        + 0.06 * spine
        - 0.05 * trachea
        + anatomy.rib_density * _ribs(anatomy, a, b) * _inside(body_q, 0.1) * above_diaphragm
        + anatomy.clavicle_density * _clavicles(anatomy, a, b)
    )
    return _Chest(density, air_depth, {PATIENT_RIGHT: lung_right, PATIENT_LEFT: lung_left})


def _finding_density(
    finding: Finding, anatomy: Anatomy, a: np.ndarray, b: np.ndarray, chest: _Chest
) -> np.ndarray:
    """Density a finding adds (before noise): zero away from the lesion."""
    lung = chest.lungs[finding.side]
    if finding.kind == "nodule":
        q = 1.0 - ((a - finding.a) ** 2 + (b - finding.b) ** 2) / finding.radius**2
        return finding.contrast * _thickness(q)
    if finding.kind == "opacity":
        total = np.zeros_like(a)
        for da, db, rel in finding.lobes:
            sigma = 0.5 * finding.radius * rel
            d2 = (a - finding.a - da) ** 2 + (b - finding.b - db) ** 2
            total += np.exp(-d2 / (2 * sigma * sigma))
        return finding.contrast * (1.0 - np.exp(-1.5 * total)) * lung
    if finding.kind == "effusion":
        ca = finding.side * anatomy.lung_offset
        lateral = np.clip(finding.side * (a - ca) / anatomy.lung_half_width, -1.0, 1.0)
        level = finding.b - finding.tilt * lateral
        return finding.contrast * chest.air_depth * lung * _inside(b - level, 0.03)
    raise ValueError(f"unknown finding kind {finding.kind!r}")


# ----------------------------------------------------------------------------- rendering


def _detector_axes(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Detector coordinates: a row vector ``u`` and a column vector ``v``, 1 = half the
    shorter side, so a taller image shows more of the neck and abdomen at the same scale."""
    height, width = shape
    half = min(height, width) / 2.0
    u = (np.arange(width, dtype=_F) - (width - 1) / 2.0) / half
    v = (np.arange(height, dtype=_F) - (height - 1) / 2.0) / half
    return u[None, :], v[:, None]


def body_grid(shape: tuple[int, int], pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame coordinates ``(a, b)`` of every pixel of an image of ``shape``."""
    u, v = _detector_axes(shape)
    du = u - _F(pose.shift_u)
    dv = v - _F(pose.shift_v)
    cos, sin = _F(math.cos(pose.angle)), _F(math.sin(pose.angle))
    a = (cos * du + sin * dv) / _F(pose.scale)
    b = (-sin * du + cos * dv) / _F(pose.scale)
    return a.astype(_F), b.astype(_F)


def render(
    anatomy: Anatomy,
    pose: Pose,
    exposure: Exposure,
    findings: tuple[Finding, ...],
    shape: tuple[int, int],
    noise_seed: list[int],
    *,
    include_findings: bool = True,
) -> Rendering:
    """Render one radiograph to display space (float32 in [0, 1], bright = dense).

    The noise field comes from ``noise_seed`` alone, so rendering with and without the
    findings differs only where a finding adds density. ``contributions`` are always
    computed (they locate the findings), whether or not they are drawn.
    """
    a, b = body_grid(shape, pose)
    chest = _chest(anatomy, a, b)
    density = chest.density
    contributions = tuple(_finding_density(f, anatomy, a, b, chest).astype(_F) for f in findings)
    if include_findings:
        for contribution in contributions:
            density = density + contribution
    gu, gv, gr = exposure.gradient
    u, v = _detector_axes(shape)
    density = density + (gu * u + gv * v + gr * (u * u + v * v))
    noise = np.random.default_rng(noise_seed).standard_normal(shape, dtype=_F)
    density = density + noise * _F(exposure.noise) * np.exp(_F(0.8) * density)
    image = np.clip((density - exposure.lo) / (exposure.hi - exposure.lo), 0.0, 1.0)
    image = image ** _F(exposure.gamma)
    return Rendering(image=image.astype(_F), contributions=contributions)


def lesion_geometry(contribution: np.ndarray) -> tuple[float, float, float]:
    """Centre ``(x, y)`` and radius ``r`` in pixels of a finding's density map.

    The centre is the contribution-weighted centroid, moved to the nearest pixel carrying at
    least half the peak when the centroid falls outside the lesion (a curved effusion); the
    radius is that of a disc with the lesion's area (pixels above 10% of the peak).
    """
    peak = float(contribution.max())
    if peak <= 0:
        raise ValueError("finding adds no density on this image (outside the field of view)")
    weights = np.clip(contribution, 0.0, None).astype(np.float64)
    rows, cols = np.indices(contribution.shape)
    y = float((weights * rows).sum() / weights.sum())
    x = float((weights * cols).sum() / weights.sum())
    strong = contribution >= 0.5 * peak
    if not strong[round(y), round(x)]:
        ys, xs = np.nonzero(strong)
        nearest = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
        y, x = float(ys[nearest]), float(xs[nearest])
    radius = math.sqrt(float((contribution >= 0.1 * peak).sum()) / math.pi)
    return x, y, radius
