"""Python API of the crystal generator that the CLI wraps (CPU side: returns pymatgen Structures).

    from qadb.models.generator import sample, train, load_checkpoint
    structs = sample("qadb/data/checkpoints/generator_default.pt", n=10, mode="csp", composition="LiFePO4")
    structs = sample(ckpt, n=100, mode="gen", conditions={"C": 0.6}, guidance={"C": 1.0}, chemsys="Li-Fe-O")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from qadb.errors import InputError
from qadb.models.generator.checkpoint import LoadedGenerator, load_checkpoint
from qadb.models.generator.conditions import N_TYPES, canonical
from qadb.models.generator.sampler import sample_tensors

_CHECKPOINTS = Path(__file__).resolve().parents[2] / "data" / "checkpoints"
DEFAULT_CHECKPOINT = _CHECKPOINTS / "generator_default.pt"
CSP_CHECKPOINT = _CHECKPOINTS / "generator_csp.pt"
TEMPLATE_T_START = 100  # of T = 1,000: how much noise a prototype guess gets before the model refines it


def default_checkpoint(mode: str = "gen") -> Path:
    """The committed checkpoint for a sampling mode. One model per task, as DiffCSP trains its CSP and ab initio
    models apart: the structure-prediction one places atoms better but combines elements worse when it samples
    compositions itself (docs/generator_log.md, "Session 19"). No fallback from one to the other: a missing file is
    reported when it is loaded, rather than samples silently coming from the model trained for the other task."""
    return CSP_CHECKPOINT if mode == "csp" else DEFAULT_CHECKPOINT


def composition_types(composition) -> list[int]:
    """Atomic numbers of one cell for a composition (formula string, dict or pymatgen Composition)."""
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(composition)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot parse composition {composition!r}: {e}") from None
    zs = []
    for el, amt in comp.items():
        if not isinstance(el, Element) or not 1 <= el.Z <= N_TYPES:
            raise InputError(f"unknown element {getattr(el, 'symbol', str(el))!r} in composition {composition!r}")
        if abs(amt - round(amt)) > 1e-6:
            raise InputError(f"composition {composition!r} needs integer site counts")
        zs += [el.Z] * int(round(amt))
    if not zs or max(zs) > N_TYPES:
        raise InputError(f"composition {composition!r} has no sites or an element beyond Z={N_TYPES}")
    return zs


def _chemsys_vector(chemsys) -> torch.Tensor:
    from pymatgen.core import Element

    els = chemsys.split("-") if isinstance(chemsys, str) else list(chemsys)
    v = torch.zeros(N_TYPES)
    for e in els:
        try:
            v[Element(str(e).strip()).Z - 1] = 1.0
        except Exception:  # noqa: BLE001
            raise InputError(f"unknown element {e!r} in chemical system {chemsys!r}") from None
    return v


def sampler_defaults(gen: LoadedGenerator, steps: int | None = None, step_lr: float | None = None,
                     corrector: bool | None = None, type_noise: float | None = None,
                     coord_noise: float | None = None, mode: str = "gen") -> dict:
    """Sampler settings: the given ones, else the checkpoint's defaults, else T steps with the corrector.

    A checkpoint may give any default per mode (``coord_noise_csp``, ``corrector_gen``, ...), which wins over the
    plain key in that mode: the committed one samples CSP without coordinate noise (0 makes ab initio cells denser
    than the data) and ab initio with the corrector (at 100 steps it lifts SPP validity from 42 to 70 %); see the docs."""
    d = gen.sampler or {}

    def pick(key: str, given, fallback):
        return given if given is not None else d.get(f"{key}_{mode}", d.get(key, fallback))

    return {"steps": int(pick("steps", steps, None) or gen.schedules.T),
            "step_lr": float(pick("step_lr", step_lr, 1e-5)),
            "corrector": bool(pick("corrector", corrector, True)),
            "type_noise": float(pick("type_noise", type_noise, 1.0)),
            "coord_noise": float(pick("coord_noise", coord_noise, 1.0))}


def to_structures(z, frac, lattice_rows, num_atoms) -> list:
    """Pymatgen structures from sampled tensors, always on a right-handed cell.

    The denoiser sees the lattice only through LᵀL, so about half the sampled cells come out left-handed
    (det L < 0). That is the same crystal, but MLIP stresses divided by the signed volume (CHGNet) then point the
    wrong way, so the cell is flipped here: L → −L with F → −F keeps every Cartesian position."""
    from pymatgen.core import Lattice, Structure

    out, k = [], 0
    for i, n in enumerate(num_atoms.tolist()):
        lat, f = lattice_rows[i].double().numpy(), frac[k:k + n].double().numpy()
        if np.linalg.det(lat) < 0:
            lat, f = -lat, (-f) % 1.0
        out.append(Structure(Lattice(lat), z[k:k + n].tolist(), f, coords_are_cartesian=False))
        k += n
    return out


def sample(checkpoint=None, n: int = 1, mode: str = "gen", composition=None, chemsys=None,
           conditions: dict | None = None, guidance: dict | None = None, steps: int | None = None, seed: int = 0,
           device: str = "cpu", num_atoms: int | list | None = None, step_lr: float | None = None,
           corrector: bool | None = None, batch_size: int = 1000, return_tensors: bool = False,
           threads: int | None = None, type_noise: float | None = None, coord_noise: float | None = None,
           prior=None, t_start: int | None = None):
    """Sample ``n`` crystals and return pymatgen Structures.

    mode ``"csp"``: structure prediction for ``composition`` (one cell: "Li2O" means 3 sites; give "Li4O2" for
    two formula units). mode ``"gen"``: ab initio; the number of atoms is drawn from the training distribution
    (or ``num_atoms``), atom types are generated; ``chemsys`` ("Li-Fe-O") restricts and guides the elements.
    ``conditions``: {name: raw value} for names in ``conditions.PROPS`` or aliases (C, M_LED, E_hull, gap, K);
    ``guidance``: {name: g} classifier-free guidance strength per property (default 1.0 where a condition is
    given; g = 0 is the plain conditional model). ``steps``, ``step_lr``, ``corrector``: sampler settings.
    ``type_noise`` (ab initio): scale of the noise of the reverse type steps (1 = plain DDPM; the committed
    checkpoint uses 0.7: fewer distinct elements per crystal, higher compositional validity). ``coord_noise``: the
    same for the fractional-coordinate predictor (the committed checkpoint uses 0 in CSP mode: a higher match rate
    at 100 steps, docs/generator_log.md "Session 7"). Each of these left
    as None takes the checkpoint's default (`sampler_defaults`). ``threads`` (CPU only): torch threads for this
    call; by default the idle cores (`cpu_threads`), at least 1: on a shared machine, threads that wait for a busy
    core at every operation make sampling several times slower than one thread.
    ``prior`` (csp): a `templates.PrototypeIndex` of known crystals. When it holds crystals of the composition's
    anonymous formula, sample i starts from the i-th closest prototype guess (cycling through them when there are
    fewer than n), noised to step ``t_start`` (default `TEMPLATE_T_START`; 0 returns the guesses unrefined), and
    the diffusion model refines it; without such crystals the samples come from noise as usual. Each structure's
    ``properties["prior"]`` says which: the template's id and element distance, or None.
    """
    gen = (checkpoint if isinstance(checkpoint, LoadedGenerator)
           else load_checkpoint(checkpoint or default_checkpoint(mode)))
    sset = sampler_defaults(gen, steps=steps, step_lr=step_lr, corrector=corrector, type_noise=type_noise,
                            coord_noise=coord_noise, mode=mode)
    if n < 1:
        raise InputError(f"n must be at least 1, not {n}")
    if mode not in ("csp", "gen"):
        raise InputError(f"mode must be 'csp' or 'gen', not {mode!r}")
    rng = torch.Generator().manual_seed(int(seed))
    guesses = []
    if prior is not None and mode != "csp":
        raise InputError("a prototype prior applies to mode 'csp' (structure prediction)")
    if mode == "csp":
        if composition is None:
            raise InputError("mode 'csp' needs a composition")
        zs = composition_types(composition)
        na = torch.full((n,), len(zs), dtype=torch.long)
        types = torch.tensor(zs * n, dtype=torch.long)
        cs = None
        if prior is not None:
            t_start = TEMPLATE_T_START if t_start is None else int(t_start)
            if not 0 <= t_start <= gen.schedules.T:
                raise InputError(f"t_start must lie in 0..{gen.schedules.T}, not {t_start}")
            found = prior.guesses(zs, k=n)
            guesses = [found[i % len(found)] for i in range(n)] if found else []
    else:
        types, zs = None, None
        if num_atoms is not None:
            na = torch.as_tensor(num_atoms, dtype=torch.long).expand(n).clone()
        else:
            hist = gen.num_atoms_hist.float()
            na = torch.multinomial(hist / hist.sum(), n, replacement=True, generator=rng)
        cs = _chemsys_vector(chemsys)[None].repeat(n, 1) if chemsys else None
    props, g = {}, {}
    for k, v in (conditions or {}).items():
        try:
            name = canonical(k)
        except KeyError as e:
            raise InputError(str(e.args[0])) from None
        mean, scale = gen.prop_norm.get(name, (0.0, 1.0))
        props[name] = (float(v) - mean) / scale
        g[name] = float((guidance or {}).get(k, (guidance or {}).get(name, 1.0)))
    prev_threads = torch.get_num_threads()
    if str(device).startswith("cpu"):
        torch.set_num_threads(int(threads) if threads else cpu_threads())
    init = None
    if guesses:
        init = (torch.tensor(np.concatenate([q.frac for q in guesses]), dtype=torch.float32),
                torch.tensor(np.stack([q.lattice for q in guesses]), dtype=torch.float32), t_start)
    try:
        if init is not None and t_start == 0:
            z, f, lat, nat = types, init[0], init[1], na
        else:
            z, f, lat, nat = _sample_batches(gen, n, na, types, zs, props, g, cs, guidance, seed, device, batch_size,
                                             sset, init)
    finally:
        torch.set_num_threads(prev_threads)
    if return_tensors:
        return z, f, lat, nat
    structs = to_structures(z, f, lat, nat)
    if mode == "csp":
        for i, s in enumerate(structs):
            s.properties["prior"] = ({"template": guesses[i].source, "distance": round(guesses[i].distance, 4),
                                      "t_start": t_start} if guesses else None)
    return structs


def cpu_threads() -> int:
    """Torch threads for CPU sampling: the cores that are idle now (load average), at least 1."""
    import os

    try:
        idle = (os.cpu_count() or 1) - round(os.getloadavg()[0])
    except OSError:
        idle = torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), idle))


def _sample_batches(gen, n, na, types, zs, props, g, cs, guidance, seed, device, batch_size, sset: dict,
                    init: tuple | None = None):
    """Sample in batches; ``init`` = (frac [n·len(zs),3], lattice rows [n,3,3], t_start) starts CSP from guesses."""
    zs_all, fr_all, la_all, na_all = [], [], [], []
    for i in range(0, n, batch_size):
        sl = slice(i, min(n, i + batch_size))
        na_b = na[sl]
        ty_b = None
        if types is not None:
            ty_b = torch.tensor(zs * len(na_b), dtype=torch.long)
        start = {}
        if init is not None:
            start = {"init": (init[0][sl.start * len(zs): sl.stop * len(zs)], init[1][sl]), "t_start": init[2]}
        z, f, lat = sample_tensors(gen.model, gen.schedules, na_b, ty_b, props=props, guidance=g,
                                   chemsys=None if cs is None else cs[sl],
                                   chemsys_guidance=float((guidance or {}).get("chemsys", 1.0)), seed=seed + i,
                                   device=device, elements=gen.elements, **start, **sset)
        zs_all.append(z), fr_all.append(f), la_all.append(lat), na_all.append(na_b)
    return torch.cat(zs_all), torch.cat(fr_all), torch.cat(la_all), torch.cat(na_all)


def train(data, state="qadb/data/checkpoints/generator_train_state.pt",
          checkpoint="qadb/data/checkpoints/generator_default.pt", log="train_logs/generator.jsonl",
          minutes: float = 8.0, seed: int = 0, device=None, **overrides) -> dict:
    """Train or resume (see `qadb.models.generator.train`); returns the run record appended to ``log``."""
    from qadb.models.generator.train import train as _train

    return _train(data=str(data), state=str(state), ckpt=str(checkpoint), log=str(log), minutes=minutes, seed=seed,
                  device=device, **overrides)


def volume_ok(structure) -> bool:
    return math.isfinite(structure.volume) and structure.volume > 0.1
