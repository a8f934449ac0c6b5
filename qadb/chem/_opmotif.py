"""Arg-max motif of matminer's ``OPSiteFingerprint`` (default settings) for every site, vectorised.

M_LED only needs the index of the largest of the 37 order parameters of a site. matminer evaluates them
with pymatgen's pure-Python ``LocalStructOrderParams`` loops (~50 ms per site); here the same definitions
are evaluated with numpy for all sites of a structure at once:
- neighbours within r = 7, 8, ... Å until there are 12 (pymatgen's neighbour search, as matminer calls it);
- for dr in (0.09, 0.10, 0.11): relative distances d/d_min binned as int(x/dr + 0.5); each bin gives a
  shell (a prefix of the distance-sorted list); a shell of n <= 12 neighbours gets the order parameters of
  CN n times (mean d_min/d)^2, the CNs it jumps over get zeros; slot 0 is 1 - d1/d2;
- all angles (theta_jk, and the azimuth phi_jkm of m about j measured from k) are computed once for the 12
  nearest neighbours and sliced per shell, so each CN costs a few array operations for all sites together;
- each of the 37 slots keeps the peak of a 0.001-wide histogram of its three dr values (matminer's rule).

Exactness. The distances and bins are bit-identical to matminer's (same neighbour search, same float
operations). Bond angles within 1e-11 rad of a threshold of the definitions (exactly 90 or 135 degrees are
common in ordered crystals) are recomputed with pymatgen's own sequence of numpy calls, so the comparison
goes the same way. Everything else agrees with pymatgen to ~1e-15; the arg-max is only returned when every
order-parameter value within `VALUE_TOL` (more where an azimuth is taken about a nearly collinear pair) of
the computed ones gives the same winner after the histogram step. Otherwise, and where an azimuth or a
Gram-Schmidt norm sits on a threshold, the site is left undecided (None) and the caller runs matminer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from pymatgen.core import Structure

from qadb.chem._neighbours import SiteNeighbours, site_neighbours

MIN_NEIGHBOURS = 12  # matminer grows r from START_RADIUS by 1 Å until a site has this many neighbours
START_RADIUS = 7.0
MIN_DISTANCE = 0.1  # Å; closer neighbours (overlapping atoms) are left to matminer, which may skip the site
FLAG_NORM = 1e-12  # pymatgen: a Gram-Schmidt remainder below this has no direction ("very_small")
LEFT_OF_UNITY = 1 - 1e-12  # pymatgen: |z| at or beyond this puts a neighbour on the pole (phi = 0)
ANGLE_TOL = 1e-11  # rad; pymatgen's and numpy's angles agree to ~1e-15 away from 0 and pi
VALUE_TOL = 1e-9  # order parameters agree to this (plus the loss of a short Gram-Schmidt remainder)

_SUPPORTED = {"sgl_bd", "bent", "tri_plan_max", "tet_max", "T", "tri_pyr", "sq_pyr", "pent_pyr", "hex_pyr",
              "sq_plan_max", "oct_max", "tri_bipyr", "pent_bipyr", "hex_bipyr", "see_saw_rect", "hex_plan_max",
              "pent_plan_max", "cuboct_max", "bcc", "q2", "q4", "q6"}  # fmt: skip


@dataclass(frozen=True)
class _Settings:
    drs: tuple[float, ...]  # the binning widths, in matminer's order
    dop: float
    dist_exp: float
    motifs: dict[int, tuple[tuple[str, dict], ...]]  # CN -> (order-parameter type, parameters) per slot
    offsets: dict[int, int]  # CN -> first of its slots among the 37
    floor: np.ndarray  # per slot, a bound pymatgen's value cannot cross (its terms are >= 0) ...
    ceiling: np.ndarray  # ... and <= 1 (weighted means of terms <= 1, times a distance factor <= 1)
    cn_of_slot: np.ndarray  # per slot, its coordination number
    cuts: np.ndarray  # every bond angle at which some order parameter switches a term

    @property
    def slots(self) -> int:
        return len(self.floor)


@cache
def _settings() -> _Settings:
    """matminer's own motif list and parameters, so that the slots line up with ``OPSiteFingerprint``."""
    from matminer.featurizers.site.fingerprint import OPSiteFingerprint

    fp = OPSiteFingerprint()
    if not fp.zero_ops or sorted(fp.cn_target_motif_op) != list(range(1, 13)) or fp.cn_target_motif_op[1] != ["sgl_bd"]:
        raise RuntimeError("matminer's OPSiteFingerprint layout changed; the fast M_LED path must be revisited")
    motifs, offsets, slot = {}, {}, 0
    for cn in range(1, 13):
        ops = tuple((o.get_type(0), dict(o.get_parameters(0) or {})) for o in fp.ops[cn])
        if any(kind not in _SUPPORTED for kind, _ in ops):
            raise RuntimeError(f"unsupported order parameter among {ops}")
        motifs[cn], offsets[cn] = ops, slot
        slot += len(ops)
    drs = tuple(fp.dr + float(i) * fp.ddr for i in range(-fp.ndr, fp.ndr + 1))
    kinds = [kind for cn in range(1, 13) for kind, _ in motifs[cn]]
    floor = np.array([-np.inf if kind == "bcc" else 0.0 for kind in kinds])
    ceiling = np.array([np.inf if kind in ("bcc", "q2", "q4", "q6") else 1.0 for kind in kinds])
    cn_of_slot = np.array([cn for cn in range(1, 13) for _ in motifs[cn]])
    cuts = np.array(sorted({c for cn in range(2, 13) for kind, p in motifs[cn] for c in _angle_cuts(kind, p)}))
    return _Settings(drs, fp.dop, fp.dist_exp, motifs, offsets, floor, ceiling, cn_of_slot, cuts)


def _gauss(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x)


class _Shells:
    """Angles among the first n neighbours of a batch of sites, with the masks the definitions use."""

    def __init__(self, theta: np.ndarray, phi: np.ndarray, flat: np.ndarray, units: np.ndarray, rank: np.ndarray):
        n = theta.shape[-1]
        eye = np.eye(n, dtype=bool)
        self.n = n
        self.theta = theta  # (B, j, k)
        self.tk = theta[:, :, :, None]  # theta_jk broadcast over m
        self.tm = theta[:, :, None, :]  # theta_jm broadcast over k
        self.phi = phi  # (B, j, k, m)
        self.pair = ~eye
        triple = ~(eye[:, :, None] | eye[:, None, :] | eye[None, :, :])
        self.m_on = triple & ~flat[:, :, :, None]  # m contributes at all (k gives a prime meridian)
        self.jim_on = self.m_on & ~flat[:, :, None, :]  # m has an azimuth too
        self.units = units
        self.before = self.pair & (rank[:, :, None] < rank[:, None, :])  # j before k in pymatgen's list
        self.bond_cosines = _pole_cosines(units) if n >= 9 else None  # only the q_l of CN 9-12 need them

    def pair_max(self, qk, wk, qm, wm) -> np.ndarray:
        """max over j != k of (k term + m terms) / (their weights), 0 where the weights vanish."""
        q = qk + qm.sum(axis=-1)
        w = wk + wm.sum(axis=-1)
        ok = w > 1e-12
        ratio = np.where(ok, q / np.where(ok, w, 1.0), 0.0)
        return np.where(self.pair, ratio, -np.inf).max(axis=(1, 2))


def _evaluate(kind: str, p: dict, s: _Shells) -> np.ndarray:
    """Raw order parameter `kind` with parameters `p` for every site of the batch (pymatgen's definitions)."""
    ipi = 1 / math.pi
    tk, tm, ph = s.tk, s.tm, s.phi
    if kind == "bent":
        g = _gauss(p["IGW_TA"] * (s.theta * ipi - p["TA"]))
        return np.where(s.pair, g, 0.0).sum(axis=(1, 2)) / (s.n * (s.n - 1))
    if kind in ("tri_plan_max", "tet_max"):
        on = s.jim_on
        qm = np.where(on, _gauss(p["IGW_TA"] * (tm * ipi - p["TA"])) * np.cos(p["fac_AA"] * ph) ** p["exp_cos_AA"], 0.0)
        return s.pair_max(_gauss(p["IGW_TA"] * (s.theta * ipi - p["TA"])), 1.0, qm, on)
    if kind in ("T", "tri_pyr", "sq_pyr", "pent_pyr", "hex_pyr"):
        on = s.jim_on
        qm = np.where(on, np.cos(p["fac_AA"] * ph) ** p["exp_cos_AA"] * _gauss(p["IGW_EP"] * (tm * ipi - 0.5)), 0.0)
        return s.pair_max(_gauss(p["IGW_EP"] * (s.theta * ipi - 0.5)), 1.0, qm, on)
    if kind in ("sq_plan_max", "oct_max", "tri_bipyr", "pent_bipyr", "hex_bipyr", "see_saw_rect", "hex_plan_max"):
        if kind == "hex_plan_max":
            def equatorial(t):
                return p["IGW_TA"] * (np.abs(t * ipi - 0.5) - p["TA"])
        else:
            def equatorial(t):
                return p["IGW_EP"] * (t * ipi - 0.5)
        k_in = s.theta < p["min_SPP"]
        south = s.m_on & (tm >= p["min_SPP"])
        jim = s.jim_on & (tm < p["min_SPP"]) & k_in[:, :, :, None]
        if kind == "see_saw_rect":
            jim &= ph < 0.75 * math.pi
        qm = np.where(south, _gauss(p["IGW_SPP"] * (tm * ipi - 1.0)), 0.0)
        qm = qm + np.where(jim, np.cos(p["fac_AA"] * ph) ** p["exp_cos_AA"] * _gauss(equatorial(tm)), 0.0)
        return s.pair_max(np.where(k_in, _gauss(equatorial(s.theta)), 0.0), k_in, qm, south | jim)
    if kind == "pent_plan_max":
        def planar(t):
            return _gauss(p["IGW_TA"] * (t * ipi - np.where(t <= p["TA"] * math.pi, 0.4, 0.8)))
        on = s.jim_on
        qm = np.where(on, planar(tm) * np.cos(ph) ** 2, 0.0)
        return s.pair_max(planar(s.theta), 1.0, qm, on)
    if kind == "cuboct_max":
        k_south = s.theta >= p["min_SPP"]
        mid = s.jim_on & (tm < p["min_SPP"]) & (p[4] < tk) & (tk < p[2])
        ring = mid & (p[4] < tm) & (tm < p[2])
        low, high = mid & (tm < p[4]), mid & (tm > p[2])
        off_ring = _gauss(0.0556 * (np.cos(ph - 0.5 * math.pi) - 0.81649658))
        qm = np.where(ring, np.cos(ph) ** 2 * _gauss(p[5] * (tm * ipi - 0.5)), 0.0)
        qm = qm + np.where(low, off_ring * _gauss(p[6] * (tm * ipi - 1 / 3)), 0.0)
        qm = qm + np.where(high, off_ring * _gauss(p[6] * (tm * ipi - 2 / 3.0)), 0.0)
        qk = np.where(k_south, p["w_SPP"] * _gauss(p["IGW_SPP"] * (s.theta * ipi - 1.0)), 0.0)
        return s.pair_max(qk, np.where(k_south, p["w_SPP"], 0.0), qm, ring | low | high)
    if kind == "bcc":
        upper = s.before  # pymatgen sums the pairs j < k of its own neighbour order
        kt = np.where(upper & (s.theta >= p["min_SPP"]), p["w_SPP"] * _gauss(p["IGW_SPP"] * (s.theta * ipi - 1.0)), 0.0)
        on = s.jim_on & upper[:, :, :, None] & (tk < p["min_SPP"])
        t = (tm - math.pi / 2.0) / math.asin(1 / 3)
        sign = np.where(tk > math.pi / 2.0, 1.0, -1.0)
        mt = np.where(on, sign * np.cos(3 * ph) * (1 / math.exp(-0.5)) * t * _gauss(t), 0.0)
        n = s.n
        return (kt.sum(axis=(1, 2)) + mt.sum(axis=(1, 2, 3))) / (0.5 * n * (6 + (n - 2) * (n - 3)))
    if kind in ("q2", "q4", "q6"):
        return _steinhardt(s.bond_cosines, int(kind[1]))
    raise RuntimeError(f"unsupported order parameter {kind}")


def _pole_cosines(units: np.ndarray) -> np.ndarray:
    """cos of the angles between bonds, rebuilt from pymatgen's polar/azimuth angles (phi = 0 on the poles)."""
    z = units[..., 2]
    theta = np.arccos(np.clip(z, -1.0, 1.0))
    rho = np.sqrt(units[..., 0] ** 2 + units[..., 1] ** 2)
    polar = (z <= -LEFT_OF_UNITY) | (z >= LEFT_OF_UNITY)
    phi = np.arccos(np.clip(units[..., 0] / np.where(polar, 1.0, rho), -1.0, 1.0))
    phi = np.where(polar, 0.0, np.where(units[..., 1] < 0.0, -phi, phi))
    v = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=-1)
    return np.clip(np.einsum("bjx,bkx->bjk", v, v), -1.0, 1.0)


def _steinhardt(x: np.ndarray, degree: int) -> np.ndarray:
    """Steinhardt q_l = sqrt(sum_jk P_l(cos gamma_jk)) / n (the addition theorem applied to pymatgen's sums)."""
    legendre = {2: (3 * x**2 - 1) / 2, 4: (35 * x**4 - 30 * x**2 + 3) / 8,
                6: (231 * x**6 - 315 * x**4 + 105 * x**2 - 5) / 16}[degree]  # fmt: skip
    return np.sqrt(np.maximum(legendre.sum(axis=(1, 2)), 0.0)) / x.shape[1]


def _angle_cuts(kind: str, p: dict) -> list[float]:
    """The bond angles at which `kind` switches a term on or off (compared with < / >= by pymatgen)."""
    cuts = [p["min_SPP"]] if "min_SPP" in p else []
    if kind == "bcc":
        cuts.append(math.pi / 2.0)
    if kind == "cuboct_max":
        cuts += [p[2], p[4]]
    if kind == "pent_plan_max":
        cuts.append(p["TA"] * math.pi)
    return cuts


def _fragile(kind: str, s: _Shells, azimuth_tol: np.ndarray) -> np.ndarray:
    """Sites of the batch where an azimuth or a pole test of `kind` is within tolerance of flipping."""
    bad = np.zeros(len(s.theta), dtype=bool)
    if kind == "see_saw_rect":
        near = np.abs(s.phi - 0.75 * math.pi) < azimuth_tol[:, None, None, None]
        bad |= np.any(near & s.jim_on, axis=(1, 2, 3))
    if kind in ("q2", "q4", "q6"):
        bad |= np.any(np.abs(np.abs(s.units[..., 2]) - LEFT_OF_UNITY) < 1e-13, axis=1)
    return bad


def _pymatgen_angles(structure: Structure, site: int, nbrs: SiteNeighbours, pairs: np.ndarray) -> list[float]:
    """Bond angles of the (j, k) `pairs` among the nearest neighbours with pymatgen's exact sequence of
    operations, for angles on a threshold (e.g. exactly 90 or 135 degrees) where the last bit decides."""
    centre = structure[site].coords
    units = {}
    for j in np.unique(pairs).tolist():
        rij = np.dot(nbrs.frac[j], structure.lattice.matrix) - centre
        units[j] = rij / float(np.linalg.norm(rij))
    return [math.acos(max(-1.0, min(np.inner(units[j], units[k]), 1.0))) for j, k in pairs.tolist()]


@lru_cache(maxsize=4096)
def _peak(values: tuple[float, ...], dop: float) -> float:
    """matminer's value of one slot: the centre of the fullest 0.001-wide histogram bin of its dr values."""
    idop = 1.0 / dop
    low = min(max(float(int(min(values) * idop - 1.5)) * dop, 0.0), 1.0)
    high = min(max(float(int(max(values) * idop + 1.5)) * dop, 0.0), 1.0)
    if low == high:
        low, high = low - dop, high + dop
    hist, edges = np.histogram(values, bins=int((high - low) * idop), range=(low, high))
    centres = 0.5 * (edges[:-1] + edges[1:])
    tops = np.flatnonzero(hist == hist.max()).tolist()
    peaks: list[tuple[int, float]] = []  # (count, centre); two adjacent full bins count as one peak
    i = 0
    while i < len(tops):
        if i + 1 < len(tops) and tops[i + 1] - tops[i] == 1:
            peaks.append((hist[tops[i]] + hist[tops[i + 1]], 0.5 * (centres[tops[i]] + centres[tops[i + 1]])))
            i += 2
        else:
            peaks.append((hist[tops[i]], centres[tops[i]]))
            i += 1
    best = max(count for count, _ in peaks)
    return next(centre for count, centre in peaks if count == best)


def _peak_range(values: np.ndarray, lowest: np.ndarray, highest: np.ndarray, dop: float) -> set[float]:
    """Every value `_peak` can take when each input lies anywhere in [lowest, highest]."""
    central = _peak(tuple(values.tolist()), dop)
    moving = lowest < highest
    if not moving.any():
        return {central}
    idop = 1.0 / dop
    low = min(max(float(int(min(values) * idop - 1.5)) * dop, 0.0), 1.0)
    high = min(max(float(int(max(values) * idop + 1.5)) * dop, 0.0), 1.0)
    if low == high:
        low, high = low - dop, high + dop
    edges = np.linspace(low, high, int((high - low) * idop) + 1)
    a, b = lowest[moving], highest[moving]
    crosses_half = np.floor(a * 2 * idop - 1e-6) != np.floor(b * 2 * idop + 1e-6)  # where min/max bins jump
    crosses_edge = (edges[None, :] >= a[:, None] - 1e-12) & (edges[None, :] <= b[:, None] + 1e-12)
    if not crosses_half.any() and not crosses_edge.any():
        return {central}
    corners = np.array(np.meshgrid(*np.stack([lowest, values, highest], axis=1))).reshape(len(values), -1).T
    return {_peak(tuple(corner.tolist()), dop) for corner in corners}


def _decide(raw: np.ndarray, lowest: np.ndarray, highest: np.ndarray, candidates: list[int], dop: float) -> int | None:
    """Index of the largest slot peak if every value in [lowest, highest] (dr x slots) gives it, else None;
    only `candidates` (the slots whose peak can reach the largest lower bound) can win."""
    if len(candidates) == 1:
        return candidates[0]
    central = {c: _peak(tuple(raw[:, c].tolist()), dop) for c in candidates}
    winner = max(candidates, key=lambda c: (central[c], -c))
    wins = _peak_range(raw[:, winner], lowest[:, winner], highest[:, winner], dop)
    for other in candidates:
        if other == winner:
            continue
        theirs = _peak_range(raw[:, other], lowest[:, other], highest[:, other], dop)
        if not all(x > y or (x == y and winner < other) for x in wins for y in theirs):
            return None
    return winner


def _shells(distances: np.ndarray, drs: tuple[float, ...]) -> list[list[int]]:
    """Per dr, the neighbour counts of successive shells up to the first with >= 12 neighbours.

    Same float operations on the same distances as matminer, so the bins are identical, not approximate."""
    rel = (distances / distances.min()).tolist()
    out = []
    for dr in drs:
        idr = 1.0 / dr
        counts, previous = [], None
        for j, x in enumerate(rel):
            current = int(x * idr + 0.5)
            if previous is not None and current != previous:
                counts.append(j)
                if j >= MIN_NEIGHBOURS:
                    break
            previous = current
        else:
            counts.append(len(rel))
        out.append(counts)
    return out


def matminer_neighbours(structure: Structure, site: int) -> SiteNeighbours:
    """The neighbour list matminer uses: within r = 7, 8, ... Å, the first r that holds 12 neighbours."""
    radius = START_RADIUS
    while True:
        nbrs = site_neighbours(structure, site, radius)
        if len(nbrs.distances) >= MIN_NEIGHBOURS:
            return nbrs
        radius += 1.0


@dataclass
class _Geometry:
    """Bond angles of the 12 nearest neighbours of a batch of sites (rows), shared by every shell."""

    units: np.ndarray  # (s, j, 3) bond directions
    rank: np.ndarray  # (s, j) position of each neighbour in pymatgen's list
    theta: np.ndarray  # (s, j, k) bond angle j-centre-k
    norm: np.ndarray  # (s, j, k) |Gram-Schmidt remainder of bond k against bond j|
    flat: np.ndarray  # (s, j, k) that remainder has no direction (pymatgen's flag)
    phi: np.ndarray  # (s, j, k, m) azimuth of m about j, from k

    @classmethod
    def of(cls, structure: Structure, sites: list[int], neighbours: dict[int, SiteNeighbours], cuts: np.ndarray):
        vectors = np.stack([neighbours[i].vectors[:MIN_NEIGHBOURS] for i in sites])
        units = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
        cos = np.einsum("sjx,skx->sjk", units, units)
        theta = np.arccos(np.clip(cos, -1.0, 1.0))
        on_cut = np.any(np.abs(theta[..., None] - cuts) < ANGLE_TOL, axis=-1) & ~np.eye(MIN_NEIGHBOURS, dtype=bool)
        for row in np.flatnonzero(on_cut.any(axis=(1, 2))).tolist():
            pairs = np.argwhere(on_cut[row])
            site = sites[row]
            theta[row, pairs[:, 0], pairs[:, 1]] = _pymatgen_angles(structure, site, neighbours[site], pairs)
        along = cos / np.einsum("sjx,sjx->sj", units, units)[:, :, None]
        rest = units[:, None, :, :] - along[..., None] * units[:, :, None, :]
        norm = np.linalg.norm(rest, axis=-1)
        flat = norm < FLAG_NORM
        axes = rest / np.where(flat, 1.0, norm)[..., None]
        phi = np.arccos(np.clip(np.einsum("sjkx,sjmx->sjkm", axes, axes), -1.0, 1.0))
        rank = np.stack([neighbours[i].rank[:MIN_NEIGHBOURS] for i in sites])
        return cls(units, rank, theta, norm, flat, phi)


def motif_indices(structure: Structure, neighbours: dict[int, SiteNeighbours]) -> dict[int, int | None]:
    """matminer's OPSiteFingerprint arg-max per site from its `matminer_neighbours`; None where this path
    cannot decide it."""
    cfg = _settings()
    out: dict[int, int | None] = {i: None for i in neighbours}
    plans = {i: _shells(nbrs.distances, cfg.drs) for i, nbrs in neighbours.items() if nbrs.distances[0] >= MIN_DISTANCE}
    if not plans:
        return out
    sites = list(plans)
    geo = _Geometry.of(structure, sites, neighbours, cfg.cuts)
    present = np.zeros((len(sites), len(cfg.drs), MIN_NEIGHBOURS + 1), dtype=bool)  # shell of n in that dr
    for row, i in enumerate(sites):
        for r, counts in enumerate(plans[i]):
            present[row, r, [n for n in counts if 2 <= n <= MIN_NEIGHBOURS]] = True
    values = np.zeros((len(sites), cfg.slots))
    tol = np.full(len(sites), VALUE_TOL)
    undecided = np.zeros(len(sites), dtype=bool)
    for n in range(2, MIN_NEIGHBOURS + 1):
        rows = np.flatnonzero(present[:, :, n].any(axis=1))
        if len(rows) == 0:
            continue
        norm = geo.norm[rows, :n, :n]
        pair = ~np.eye(n, dtype=bool)
        loss = 1e-14 / np.where(pair & (norm >= FLAG_NORM), norm, np.inf).min(axis=(1, 2))  # azimuths about a
        tol[rows] = np.maximum(tol[rows], VALUE_TOL + 10 * loss)  # nearly collinear pair lose digits
        undecided[rows] |= np.any(pair & (np.abs(norm - FLAG_NORM) < 1e-13), axis=(1, 2))
        s = _Shells(geo.theta[rows, :n, :n], geo.phi[rows, :n, :n, :n], geo.flat[rows, :n, :n], geo.units[rows, :n],
                    geo.rank[rows, :n])  # fmt: skip
        start = cfg.offsets[n]
        for t, (kind, p) in enumerate(cfg.motifs[n]):
            values[rows, start + t] = _evaluate(kind, p, s)
            undecided[rows] |= _fragile(kind, s, ANGLE_TOL + 10 * loss)

    distances = np.stack([neighbours[i].distances[:MIN_NEIGHBOURS] for i in sites])
    values[:, 0] = 1 - distances[:, 0] / distances[:, 1]
    # (mean d_min / d over the shell)^dist_exp multiplies each CN's values; not slot 0
    factor = (np.cumsum(distances[:, :1] / distances, axis=1) / np.arange(1, MIN_NEIGHBOURS + 1)) ** cfg.dist_exp
    factor[:, 0] = 1.0
    computed = present[:, :, cfg.cn_of_slot]  # (s, dr, slot); the rest are matminer's exact zeros
    computed[:, :, 0] = True
    raw = np.where(computed, (values * factor[:, cfg.cn_of_slot - 1])[:, None, :], 0.0)
    lowest = np.where(computed, np.maximum(raw - tol[:, None, None], cfg.floor), raw)
    highest = np.where(computed, np.minimum(raw + tol[:, None, None], cfg.ceiling), raw)
    reach = 2.5 * cfg.dop + 1e-12  # a slot's peak lies within 2.5 dop of its values, clipped to [0, 1] +- dop
    lower = np.clip(lowest.min(axis=1) - reach, 0.0, 1.0) - cfg.dop
    upper = np.clip(highest.max(axis=1) + reach, 0.0, 1.0) + cfg.dop
    contenders = upper >= lower.max(axis=1, keepdims=True)
    for row, i in enumerate(sites):
        if undecided[row] or not np.all(np.isfinite(raw[row])):
            continue
        candidates = np.flatnonzero(contenders[row]).tolist()
        try:
            out[i] = _decide(raw[row], lowest[row], highest[row], candidates, cfg.dop)
        except ValueError:  # a histogram matminer could not build either: let matminer decide
            out[i] = None
    return out
