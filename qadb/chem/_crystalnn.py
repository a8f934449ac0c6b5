"""Neighbour elements of pymatgen ``CrystalNN`` with PIGEN's geometric settings, from one small hull per site.

Settings reproduced: ``CrystalNN(distance_cutoffs=None, x_diff_weight=0, porous_adjustment=False,
search_cutoff=12, weighted_cn=False)``. With these, CrystalNN's answer depends only on the Voronoi cell of
the site: each face's solid angle over the largest one, rounded to 3 decimals, gives the weight ladder whose
semicircle-integral scores pick the coordination number; the neighbours are the faces with weight at or above
the chosen rung. pymatgen tessellates every point within 12 Å for every site (~30 ms); the cell only depends
on points within twice its largest vertex distance, so here the cell comes from the convex hull of the
inverted nearby points (inversion in a sphere turns bisector planes into points: hull vertices are the faces,
hull facets the cell vertices), and its validity is checked rather than assumed.

A site gets None (the caller then asks CrystalNN itself) when a rounded weight sits within `WEIGHT_TOL` of a
rounding boundary, when the cell is not bounded by the nearby points, or when it reaches beyond the 6 Å that
pymatgen's 12 Å sphere guarantees.
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Structure
from scipy.spatial import ConvexHull, QhullError

from qadb.chem._neighbours import SiteNeighbours, site_neighbours

SEARCH_CUTOFF = 12.0  # CrystalNN(search_cutoff=12): pymatgen's cell is exact when its vertices lie within 6 Å
WEIGHT_TOL = 1e-9  # relative solid angles closer than this to a 3-decimal rounding boundary are not decided here


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)  # fmt: skip


def _hull(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(cell vertices, faces of each as neighbour positions) of the site's Voronoi cell; None if unbounded.

    Inversion 2 v/|v|^2 maps the bisector plane of each neighbour v to a point: the convex hull of those
    points has the faces as vertices and the cell vertices as (dual) facets."""
    try:
        hull = ConvexHull(2.0 * vectors / _dot(vectors, vectors)[:, None])
    except QhullError:
        return None
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]
    if np.any(offsets >= 0):  # the centre is not strictly inside: the cell is unbounded by these points
        return None
    return -normals / offsets[:, None], hull.simplices


def _cells(vectors: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, float] | None]:
    """Per site: (neighbour positions with a face, their solid angles, largest cell-vertex distance), None if
    the cell is unbounded; the face geometry of all sites is done in one batch of array operations."""
    hulls = [_hull(v) for v in vectors]
    done = [k for k, h in enumerate(hulls) if h is not None]
    if not done:
        return [None] * len(vectors)
    base = np.cumsum([0] + [len(vectors[k]) for k in done])
    every = np.concatenate([vectors[k] for k in done])
    corners = [hulls[k][0] for k in done]
    # one row per (cell vertex, face through it); faces are numbered over all sites
    owner = np.concatenate([hulls[k][1].ravel() + base[n] for n, k in enumerate(done)])
    points = np.concatenate([np.repeat(c, 3, axis=0) for c in corners])
    order = np.argsort(owner, kind="stable")
    owner, points = owner[order], points[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    counts = np.diff(np.r_[starts, len(owner)])
    faces = owner[starts]
    # cyclic order of each face's corners: by angle about the face centroid (inside it: faces are convex)
    axis = every[faces]
    helper = np.where(np.abs(axis[:, :1]) < 0.9 * np.sqrt(_dot(axis, axis))[:, None], [[1.0, 0, 0]], [[0, 1.0, 0]])
    e1 = _cross(axis, helper)
    e2 = _cross(axis, e1)
    offcentre = points - np.repeat(np.add.reduceat(points, starts) / counts[:, None], counts, axis=0)
    angle = np.arctan2(_dot(offcentre, np.repeat(e2, counts, axis=0)), _dot(offcentre, np.repeat(e1, counts, axis=0)))
    points = points[np.lexsort((angle, owner))]
    # solid angle of each face: a fan of triangles from its first corner (Van Oosterom & Strackee)
    first = np.repeat(starts, counts)
    fan = np.flatnonzero((np.arange(len(owner)) > first) & np.r_[owner[1:] == owner[:-1], False])
    a, b, c = points[first[fan]], points[fan], points[fan + 1]
    na, nb, nc = (np.sqrt(_dot(x, x)) for x in (a, b, c))
    denominator = na * nb * nc + _dot(a, b) * nc + _dot(a, c) * nb + _dot(b, c) * na
    triangle = 2.0 * np.arctan2(np.abs(_dot(a, _cross(b, c))), denominator)
    solid = np.bincount(np.searchsorted(starts, fan, side="right") - 1, triangle, minlength=len(starts))
    split = np.searchsorted(faces, base)
    out: list[tuple[np.ndarray, np.ndarray, float] | None] = [None] * len(vectors)
    for n, k in enumerate(done):
        reach = float(np.sqrt(_dot(corners[n], corners[n]).max()))
        out[k] = (faces[split[n] : split[n + 1]] - base[n], solid[split[n] : split[n + 1]], reach)
    return out


def _semicircle_area(x: float) -> float:
    """Area under the unit circle between 0 and x (x < 1), the form CrystalNN integrates its ladder with."""
    root = math.sqrt(1 - x**2)
    return 0.5 * (x * root + math.atan(x / root))


def _chosen_faces(weights: list[float]) -> float:
    """The weight rung CrystalNN keeps (faces with rounded weight >= it are neighbours; inf = none)."""
    rungs = sorted({w for w in weights if w > 0}, reverse=True) + [0.0]
    best, best_score, total = math.inf, -math.inf, 0.0
    for upper, lower in zip(rungs[:-1], rungs[1:]):
        area_upper = 0.25 * math.pi if upper == 1 else _semicircle_area(upper)
        score = (area_upper - _semicircle_area(lower)) / (0.25 * math.pi)
        total += score
        if score > best_score:
            best, best_score = upper, score
    if 1 - total > 0 and 1 - total > best_score:
        return math.inf
    return best


def _elements(species: list[str], nbrs: SiteNeighbours, cell: tuple | None) -> frozenset[str] | None:
    """CrystalNN's neighbour species from the cell, None where the cell or a weight is not trustworthy."""
    if cell is None:
        return None
    faces, solid, reach = cell
    if reach >= min(nbrs.radius, SEARCH_CUTOFF) / 2 - 1e-6:  # a farther point could cut it, here or in pymatgen
        return None
    relative = solid / solid.max()
    scaled = relative * 1000.0
    if np.any(np.abs(scaled - np.floor(scaled) - 0.5) < WEIGHT_TOL * 1000.0):
        return None
    weights = [round(w, 3) for w in relative.tolist()]
    rung = _chosen_faces(weights)
    return frozenset(species[int(nbrs.indices[f])] for f, w in zip(faces.tolist(), weights) if w >= rung)


def crystalnn_elements(structure: Structure, neighbours: dict[int, SiteNeighbours]) -> dict[int, frozenset[str] | None]:
    """Distinct neighbour species strings per site (None: not decided here, ask CrystalNN).

    `neighbours` are any neighbour lists of the sites; a 12 Å one is fetched for cells they do not enclose."""
    sites = list(neighbours)
    cells = _cells([neighbours[i].vectors for i in sites])
    species = [site.species_string for site in structure]
    out = {i: _elements(species, neighbours[i], cell) for i, cell in zip(sites, cells)}
    retry = [i for i in sites if out[i] is None and neighbours[i].radius < SEARCH_CUTOFF]
    if retry:
        wide = {i: site_neighbours(structure, i, SEARCH_CUTOFF) for i in retry}
        for i, cell in zip(retry, _cells([wide[i].vectors for i in retry])):
            out[i] = _elements(species, wide[i], cell)
    return out
