"""Generator commands: `qadb train generator` and `qadb sample`.

Real training runs on the GPU machine (torch alone, from the source tree):

    PYTHONPATH=. python -m qadb.models.generator.train --data .gen_scratch/gen_data.pt \
        --state qadb/data/checkpoints/generator_train_state.pt --log train_logs/generator.jsonl --minutes 8 \
        --batch-size 2048 --lr 5e-4 --lr-decay cosine --lr-min 2e-5

`qadb train generator` wraps the same loop here (CPU or GPU), builds the tensors (from the staged datasets or
from the store), and registers the resulting checkpoint in the store with its lineage. On a CPU, `--smoke`
trains a tiny model for a few steps to check the pipeline end to end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from qadb.cli.groups import cli, console, open_store, out, train
from qadb.errors import InputError


def _say(msg: str) -> None:
    out.print(msg, soft_wrap=True, highlight=False)


SMOKE = dict(hidden=32, layers=2, n_freq=4, batch_size=8, warmup=5)


def _kv(items, what: str, allow_chemsys: bool = False) -> dict:
    """Parse NAME=VALUE options into {canonical name: float}; one-line InputError when malformed."""
    from qadb.models.generator.conditions import canonical

    res = {}
    for item in items:
        name, sep, val = item.partition("=")
        name, val = name.strip(), val.strip()
        if not sep or not name or not val:
            raise InputError(f"malformed {what} {item!r}: expected NAME=VALUE, e.g. C=0.7")
        try:
            num = float(val)
        except ValueError:
            raise InputError(f"malformed {what} {item!r}: {val!r} is not a number") from None
        if allow_chemsys and name == "chemsys":
            res["chemsys"] = num
            continue
        try:
            res[canonical(name)] = num
        except KeyError as e:
            raise InputError(str(e.args[0])) from None
    return res


def _keep_lowest(structs: list, n: int, mlip: str, device: str) -> tuple[list, dict]:
    """The `n` candidates with the lowest single-point MLIP energy per atom, and how they were chosen."""
    from qadb.drivers.rank import RankSettings, rank_by_energy

    t0 = time.time()
    ranking = rank_by_energy(structs, RankSettings(model=mlip), device=device, threads=None)
    keep = ranking.best(n)
    if not keep:
        raise InputError(f"none of the {len(structs)} candidates could be evaluated by {ranking.fidelity}: "
                         f"{ranking.order[0].reason}")
    kept = ranking.order[: len(keep)]  # `best` takes the evaluated head of the order
    _say(f"ranked {len(structs)} candidates by {ranking.fidelity} in {time.time() - t0:.1f} s; kept "
         + ", ".join(f"#{r.index} ({r.energy_per_atom:.4f} eV/atom)" for r in kept)
         + (f"; {sum(r.reason is not None for r in ranking.order)} not evaluated" if ranking.order[-1].reason else ""))
    energies = [r.energy_per_atom for r in kept]
    return [structs[i] for i in keep], {"mlip": ranking.fidelity, "energy_per_atom_eV": energies}


@train.command("generator")
@click.option("--data", type=click.Path(path_type=Path), default=Path(".gen_scratch/gen_data.pt"), show_default=True,
              help="Training tensors (written first by --prepare or --from-store).")
@click.option("--prepare", is_flag=True, help="Build --data from the staged datasets (../shared/data; ~13 min).")
@click.option("--from-store", is_flag=True, help="Build --data from the structures and labels in the store.")
@click.option("--chemsys", default=None, help="With --from-store: only this chemical system.")
@click.option("--limit", type=int, default=0, help="With --from-store: at most this many structures.")
@click.option("--state", type=click.Path(path_type=Path), default=Path("generator_train_state.pt"), show_default=True,
              help="Resumable train state (resumed when it exists).")
@click.option("--checkpoint", "ckpt", type=click.Path(path_type=Path), default=Path("generator.pt"),
              show_default=True, help="Inference checkpoint written at the end.")
@click.option("--log", type=click.Path(path_type=Path), default=Path("train_logs/generator.jsonl"), show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="Wall-clock budget of this call.")
@click.option("--max-steps", type=int, default=0, help="Stop after this many steps (0: time budget only).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--lr-decay", type=click.Choice(["none", "cosine"]), default=None)
@click.option("--lr-min", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--smoke", is_flag=True, help="Tiny model, 20 steps: a CPU check of the pipeline, not a model.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the checkpoint in the store (GridFS, with its parent) and record the activity.")
@click.pass_context
def train_generator(ctx, data, prepare, from_store, chemsys, limit, state, ckpt, log, minutes, max_steps, batch_size,
                    lr, lr_decay, lr_min, seed, device, smoke, register):
    """Train or resume the crystal diffusion generator (see docs/generator.md)."""
    if prepare and from_store:
        raise InputError("give at most one of --prepare and --from-store")
    store = None
    if from_store or register:
        store = open_store(ctx)
    if prepare:
        from qadb.models.generator import prepare as prep

        prep.main(["--out", str(data)])
    elif from_store:
        from qadb.models.generator.store_data import write_from_store

        meta = write_from_store(data, chemsys=chemsys, limit=limit)
        console.print(f"wrote {data}: {meta['n_train']} structures from the store ({meta['counts']['store']})")
    if not data.is_file():
        raise InputError(f"training data {data} not found: build it with --prepare or --from-store")
    overrides = dict(batch_size=batch_size, lr=lr, lr_decay=lr_decay, lr_min=lr_min)
    if smoke:
        overrides = {**SMOKE, **{k: v for k, v in overrides.items() if v is not None}}
        max_steps = max_steps or 20
    from qadb.models.generator.store_samples import checkpoint_id
    from qadb.models.generator.train import train as run_train

    parent = None
    if register and ckpt.is_file():
        parent = checkpoint_id(store, ckpt)
    t0 = time.time()
    try:
        rec = run_train(data=str(data), state=str(state), ckpt=str(ckpt), log=str(log), minutes=minutes,
                        max_steps=max_steps, seed=seed, device=device, run_name=f"cli-{time.strftime('%Y%m%dT%H%M%S')}",
                        **overrides)
    except (KeyError, RuntimeError, EOFError) as e:
        raise InputError(f"cannot train on {data}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    _say(f"trained steps {rec['step_start']} -> {rec['step_end']} on {rec['device']} in {rec['wall_s']} s; "
              f"val loss (EMA) {rec['val_loss_ema']}; checkpoint {ckpt}")
    if register:
        from qadb import __version__
        from qadb.store.documents import Activity, Ref, utcnow
        from qadb.store.identity import content_hash

        cid = checkpoint_id(store, ckpt, parent=parent)
        act_id = "train-" + content_hash({"ckpt": cid, "parent": parent, "run": rec["run"]})[:20]
        Activity(id=act_id, kind="train", status="completed",
                 inputs=[Ref(collection="file", id=str(data), role="training data")]
                 + ([Ref(collection="checkpoints", id=parent, role="parent")] if parent else []),
                 parameters={k: v for k, v in rec["config"].items()}, code={"qadb": __version__},
                 summary={"checkpoint": cid, "step_start": rec["step_start"], "step_end": rec["step_end"],
                          "val_loss_ema": rec["val_loss_ema"], "seconds": round(time.time() - t0, 1),
                          "data_hash": rec["data_hash"]},
                 ended_at=utcnow()).save()
        _say(f"registered checkpoint {cid}" + (f" (parent {parent})" if parent else ""))
    if store is not None:
        store.close()


@cli.command("sample")
@click.option("-n", "n", type=click.IntRange(1, 100000), default=10, show_default=True, help="Number of structures.")
@click.option("--mode", type=click.Choice(["gen", "csp"]), default="gen", show_default=True,
              help="gen: ab initio generation; csp: structure prediction for --composition.")
@click.option("--composition", default=None, help="csp: the cell's composition, e.g. Na2Cl2 (4 sites).")
@click.option("--chemsys", default=None, help="gen: restrict and guide the elements, e.g. Li-Fe-O.")
@click.option("--condition", "conditions", multiple=True,
              help="NAME=VALUE, repeatable: C (compactness), M_LED, formation_energy, E_hull, gap, K.")
@click.option("--guidance", "guidance", multiple=True,
              help="NAME=G guidance strength per condition (default 1.0), or chemsys=G.")
@click.option("--steps", type=click.IntRange(1, 100000), default=None,
              help="Reverse steps (default: the checkpoint's default_steps, else T).")
@click.option("--step-lr", type=float, default=None, help="Langevin corrector step (default: the checkpoint's).")
@click.option("--corrector/--no-corrector", default=None, help="Predictor-corrector (default: the checkpoint's).")
@click.option("--type-noise", type=click.FloatRange(0, 2), default=None,
              help="gen: scale of the reverse type noise, or the temperature of a masked type process "
                   "(default: the checkpoint's; 1 = plain DDPM / the learned categorical).")
@click.option("--coord-noise", type=click.FloatRange(0, 2), default=None,
              help="Scale of the reverse coordinate-predictor noise (default: the checkpoint's; 1 = plain VE).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU torch threads (default: the idle cores, at least 1).")
@click.option("--num-atoms", type=click.IntRange(1, 100), default=None, help="gen: fixed number of sites.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--checkpoint", "ckpt", type=click.Path(path_type=Path), default=None,
              help="Generator checkpoint (default: the committed generator_csp.pt for csp, generator_default.pt for "
                   "gen, in qadb/data/checkpoints).")
@click.option("--candidates", type=click.IntRange(1, 100000), default=None,
              help="csp: sample this many cells and keep the -n with the lowest MLIP energy per atom.")
@click.option("--prior", type=click.Choice(["none", "store"]), default="none", show_default=True,
              help="csp: 'store' starts each sample from a prototype guess, a stored crystal of the same anonymous "
                   "formula with the elements substituted, which the model refines (noise from --noise-from, "
                   "nearest guesses first); compositions without one sample from noise.")
@click.option("--noise-from", "t_start", type=click.IntRange(0, 100000), default=None,
              help="With --prior store: the diffusion step (of the checkpoint's T) the guesses are noised to "
                   "(default: qadb.models.generator.api.TEMPLATE_T_START; 0 keeps them unrefined).")
@click.option("--rank-mlip", default="chgnet", show_default=True,
              help="With --candidates: the MLIP that ranks them (single-point energy; see qadb.drivers.MODELS).")
@click.option("--store/--no-store", "to_store", default=True, show_default=True,
              help="Store the samples as structures (origin: checkpoint + settings).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Also write the structures to a JSON file (list of pymatgen dicts).")
@click.pass_context
def sample_cmd(ctx, n, mode, composition, chemsys, conditions, guidance, steps, step_lr, corrector, type_noise,
               coord_noise, threads, num_atoms, seed, device, ckpt, candidates, prior, t_start, rank_mlip, to_store,
               output):
    """Sample crystals from the generator and store them with their provenance."""
    from qadb.models.generator.api import default_checkpoint, sample, sampler_defaults
    from qadb.models.generator.checkpoint import load_checkpoint

    if mode == "csp" and not composition:
        raise InputError("--mode csp needs --composition")
    if mode == "csp" and chemsys:
        raise InputError("--chemsys applies to --mode gen (csp takes --composition)")
    if mode == "gen" and composition:
        raise InputError("--composition applies to --mode csp (gen takes --chemsys)")
    if candidates is not None and mode != "csp":
        raise InputError("--candidates ranks cells of one composition: it needs --mode csp")
    if candidates is not None and candidates < n:
        raise InputError(f"--candidates {candidates} is fewer than -n {n}: nothing to choose from")
    if prior != "none" and mode != "csp":
        raise InputError("--prior gives prototype guesses for one composition: it needs --mode csp")
    if t_start is not None and prior == "none":
        raise InputError("--noise-from applies to --prior store")
    cond = _kv(conditions, "condition")
    guid = _kv(guidance, "guidance", allow_chemsys=True)
    stray = sorted(set(guid) - set(cond) - {"chemsys"})
    if stray:
        raise InputError(f"--guidance for {', '.join(stray)} without a --condition for it")
    if "chemsys" in guid and not chemsys:
        raise InputError("--guidance chemsys=G needs --chemsys")
    path = Path(ckpt) if ckpt else default_checkpoint(mode)
    store = open_store(ctx) if to_store or prior == "store" else None
    gen = load_checkpoint(path, device=device)
    if t_start is not None and t_start > gen.schedules.T:
        raise InputError(f"--noise-from {t_start} is beyond the checkpoint's last diffusion step ({gen.schedules.T})")
    index = None
    if prior == "store":
        from qadb.models.generator.api import composition_types
        from qadb.models.generator.templates import from_store

        index = from_store(composition_types(composition))
        if not to_store:
            store.close()
            store = None
        _say(f"prototype guesses: {len(index)} stored crystal(s) of {composition}'s anonymous formula and size"
             + ("" if len(index) else "; sampling from noise"))
    settings = sampler_defaults(gen, steps=steps, step_lr=step_lr, corrector=corrector, type_noise=type_noise,
                                coord_noise=coord_noise, mode=mode)
    t0 = time.time()
    structs = sample(gen, n=candidates or n, mode=mode, composition=composition, chemsys=chemsys,
                     conditions=cond or None, guidance=guid or None, seed=seed, device=device, num_atoms=num_atoms,
                     threads=threads, prior=index, t_start=t_start, **settings)
    _say(f"sampled {len(structs)} structures in {time.time() - t0:.1f} s ({settings['steps']} steps, "
         f"corrector {'on' if settings['corrector'] else 'off'})")
    params = {"n": n, "mode": mode, "composition": composition, "chemsys": chemsys, "conditions": cond,
              "guidance": guid, "seed": seed, "device": device, "num_atoms": num_atoms, **settings}
    if index is not None:
        used = [s.properties["prior"] for s in structs if s.properties.get("prior")]
        params["prior"] = {"kind": "store prototypes", "n_templates": len(index),
                           "templates": sorted({u["template"] for u in used}),
                           "t_start": used[0]["t_start"] if used else None}
    if candidates is not None:
        structs, params["ranking"] = _keep_lowest(structs, n, rank_mlip, device)
        params["candidates"] = candidates
    dt = time.time() - t0
    params = {k: v for k, v in params.items() if v not in (None, {})}
    if output:
        output.write_text(json.dumps([s.as_dict() for s in structs]))
        _say(f"wrote {output}")
    if store is not None:
        from qadb.models.generator.store_samples import checkpoint_id, store_samples

        with store:
            cid = checkpoint_id(store, path)
            rep = store_samples(structs, checkpoint=cid, settings=params, seconds=dt)
        _say(f"stored {rep['stored']} new structures ({rep['duplicates']} already stored, "
                  f"{rep['invalid']} invalid not stored: {rep['invalid_reasons']}) from checkpoint {cid}; "
                  f"activity {rep['activity']}")
    else:
        for s in structs[:20]:
            _say(f"{s.composition.reduced_formula:>14s}  {len(s):3d} sites  {s.volume / len(s):6.2f} Å³/atom")
