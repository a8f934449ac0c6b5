"""Per-site periodic neighbour lists exactly as pymatgen's ``Structure.get_neighbors`` builds them.

Why the same call: matminer's order parameters take their neighbours from ``get_neighbors``, and one of them
(bcc) depends on the order of that list, which pymatgen's cell-list search returns differently when asked
for all sites at once. Asking per site (as ``get_neighbors`` does, without building Neighbor objects) gives
the same order and bit-identical distances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure
from pymatgen.optimization.neighbors import find_points_in_spheres

NUMERICAL_TOL = 1e-8  # pymatgen's default: within r means d <= r + 1e-8; d <= 1e-8 is the site itself


@dataclass(frozen=True)
class SiteNeighbours:
    """Neighbours of one site within `radius`, sorted by distance (stable: ties keep pymatgen's order)."""

    radius: float
    vectors: np.ndarray  # (k, 3) Cartesian, centre -> neighbour image
    distances: np.ndarray  # (k,) as pymatgen reports them
    indices: np.ndarray  # (k,) index in the structure of each neighbour's site
    rank: np.ndarray  # (k,) position of each neighbour in pymatgen's own (unsorted) list
    frac: np.ndarray  # (k, 3) fractional coordinates of each neighbour image, as pymatgen builds them


def site_neighbours(structure: Structure, site: int, radius: float) -> SiteNeighbours:
    """Neighbours of `site` within `radius` (the site itself excluded)."""
    cart = np.ascontiguousarray(structure.cart_coords, dtype=float)
    lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
    centre = np.ascontiguousarray(cart[site : site + 1])
    pbc = np.ascontiguousarray(structure.pbc, dtype=np.int64)
    _, points, images, distances = find_points_in_spheres(cart, centre, r=radius, pbc=pbc, lattice=lattice, tol=NUMERICAL_TOL)
    keep = ~((points == site) & (distances <= NUMERICAL_TOL))
    points, images, distances = points[keep], images[keep], distances[keep]
    frac = structure.frac_coords[points] + images
    vectors = frac @ structure.lattice.matrix - centre[0]
    order = np.argsort(distances, kind="stable")
    return SiteNeighbours(radius, vectors[order], distances[order], points[order], order, frac[order])
