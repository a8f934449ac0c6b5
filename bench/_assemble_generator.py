"""Rebuild `bench/results/generator.json` when its CSP and its ab initio figures come from two checkpoints.

Since session 19 the platform ships one generator checkpoint per task (docs/generator_log.md, "Session 19"), so the
results file joins the scored files of both: every `csp*` figure from the CSP checkpoint's files (all 9,046 at 1
sample; optionally k samples, an MLIP-ranked pick, the CPU-default pair), every other figure from a results file of
the ab initio checkpoint. `details.checkpoint` names the checkpoint behind each group, and the CSP figures the file
held before move to `details.csp_reference`.

    python bench/_assemble_generator.py --gen bench/results/generator_r14.json --csp-full csp_full.json \
        [--csp-k20 cspk20.json] [--csp-k8 cspk8.json] [--cpu-pair pair_cpu.json] [--csp-prior prior.json]
        [--out bench/results/generator.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generator import _flat, write_results  # noqa: E402

from qadb.errors import CheckpointError  # noqa: E402
from qadb.models.generator.checkpoint import read_raw  # noqa: E402

CSP_HEADLINE = ("csp_match_rate_1", "csp_rmse_1", "csp_n")


def _read(path: str | Path) -> dict:
    try:
        return _flat(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read results file {path}: {e}") from None


def _csp_only(res: dict, option: str, need: str) -> dict:
    if need not in res:
        raise SystemExit(f"error: the {option} file has no {need}: not a scored CSP file of the kind it takes")
    return {k: v for k, v in res.items() if k.startswith("csp") and not k.endswith("_meta")}


def checkpoint_meta(path: str | Path) -> dict:
    """The training meta (run, step, data hash) of the checkpoint the CSP figures are reported for."""
    try:
        return json.loads(read_raw(path)["meta_json"])
    except CheckpointError as e:
        raise SystemExit(f"error: cannot read the --csp-file checkpoint: {e}") from None


def check_sampled_from(ck_meta: dict, files: dict) -> None:
    """Every scored file that names its checkpoint (files scored before session 21 may not) was sampled from
    ``ck_meta``'s step and training data: figures of another checkpoint must not be filed under this one."""
    want = (ck_meta.get("step"), ck_meta.get("data_hash"))
    for option, res in files.items():
        got = ((res or {}).get("csp_meta") or (res or {}).get("csp_k_meta") or {}).get("ckpt_meta")
        if got and (got.get("step"), got.get("data_hash")) != want:
            raise SystemExit(f"error: the {option} file was sampled from step {got.get('step')} "
                             f"(data {got.get('data_hash')}), not from the --csp-file checkpoint (step {want[0]}, "
                             f"data {want[1]})")


def prior_figures(prior: dict, settings: str = "", ranked: dict | None = None) -> dict:
    """The prototype-prior figures from a scored file of `api.sample(prior=...)` samples (`--npz-csp`) that was
    scored beside the unrefined guesses (`--reference retrieval=...`) and, optionally, the samples from noise of
    the same checkpoint (`--reference diffusion=...`); `ranked`: a scored file of k prior samples per composition
    (`--npz-csp-k --rank-mlip`), whose best-of-k and ranked figures go beside them."""
    p = _csp_only(prior, "--csp-prior", "csp_match_rate_1")
    refs = p.get("csp_reference") or {}
    if "retrieval" not in refs:
        raise SystemExit("error: the --csp-prior file has no 'retrieval' reference (score it with "
                         "--reference retrieval=GUESSES.npz)")
    out = {"csp_match_rate_1_prior": p["csp_match_rate_1"], "csp_rmse_1_prior": p["csp_rmse_1"],
           "csp_match_rate_1_retrieval": refs["retrieval"]["csp_match_rate_1"],
           "csp_rmse_1_retrieval": refs["retrieval"]["csp_rmse_1"]}
    out["csp_prior"] = {"settings": settings, "csp_n": p["csp_n"], "by_prototype": p.get("csp_by_prototype"),
                        **{f"paired_with_{name}": ref["paired_with_this"] for name, ref in refs.items()},
                        **{name: {k: ref[k] for k in CSP_HEADLINE} for name, ref in refs.items()}}
    if ranked is not None:
        out["csp_prior"]["ranked"] = _csp_only(ranked, "--csp-prior-ranked", "csp_match_rate_1_ranked")
    return out


def assemble(gen: dict, gen_path: str, csp_full: dict, csp_k20: dict | None = None,
             csp_k8: dict | None = None, cpu_pair: dict | None = None, csp_file: str = "", gen_file: str = "",
             note: str = "", ranked_settings: str = "", cpu_settings: str = "", history: str = "",
             csp_ckpt_meta: dict | None = None, csp_prior: dict | None = None, prior_settings: str = "",
             csp_prior_ranked: dict | None = None) -> dict:
    """The flat figures of the joined results file (`write_results` writes them); `csp_ckpt_meta`: the meta of
    `csp_file` (default: the one `csp_full` was sampled from)."""
    res = {k: v for k, v in gen.items() if not k.startswith("csp")}
    before = gen.get("checkpoint") or {}
    label = (before.get("csp") or before).get("run") or gen_path
    reference = {name: {k: v for k, v in ref.items() if k in (*CSP_HEADLINE, "source")}
                 for name, ref in (gen.get("csp_reference") or {}).items()}
    ck = csp_ckpt_meta or (csp_full.get("csp_meta") or {}).get("ckpt_meta") or {}
    same = (before.get("csp") or {}).get("step") == ck.get("step") is not None  # re-assembled for the same checkpoint
    if "csp_match_rate_1" in gen and not same:
        reference[label] = {k: gen[k] for k in CSP_HEADLINE if k in gen} | {"source": gen_path}
    res.update(_csp_only(csp_full, "--csp-full", "csp_match_rate_1"))
    for name, ref in (csp_full.get("csp_reference") or {}).items():  # scored beside it, paired composition by composition
        meta = ref.get("meta") or {}
        run = (meta.get("ckpt_meta") or {}).get("run") or name
        if run in reference:  # the same checkpoint sampled again (another seed): both figures stay
            run = f"{run}, seed {meta.get('seed', name)}"
        reference[run] = {k: ref[k] for k in (*CSP_HEADLINE, "paired_with_this") if k in ref} | {
            "source": "--reference of the --csp-full file"}
    if csp_k20 is not None:
        k20 = _csp_only(csp_k20, "--csp-k20", "csp_match_rate_20")
        res.update({k: v for k, v in k20.items() if "ranked" not in k and k not in CSP_HEADLINE})
        res.update({f"{k}_20x100steps": v for k, v in k20.items() if "ranked" in k})
    if csp_k8 is not None:  # the 1-sample headline is the whole test set's, never a k-sample file's first sample
        res.update({k: v for k, v in _csp_only(csp_k8, "--csp-k8", "csp_match_rate_1_ranked").items()
                    if k not in CSP_HEADLINE})
        if ranked_settings:
            res["csp_match_rate_1_ranked_settings"] = ranked_settings
    if cpu_pair is not None:
        pair = _csp_only(cpu_pair, "--cpu-pair", "csp_match_rate_1")
        res["csp_cpu_default"] = {"settings": cpu_settings, **{k: pair[k] for k in CSP_HEADLINE}}
        for name, ref in (pair.get("csp_reference") or {}).items():
            res["csp_cpu_default"][f"paired_with_{name}"] = ref["paired_with_this"]
            res["csp_cpu_default"][name] = {k: ref[k] for k in CSP_HEADLINE[:2]}
    if csp_prior is not None:
        res.update(prior_figures(csp_prior, prior_settings, csp_prior_ranked))
    res["csp_reference"] = reference
    res["checkpoint"] = {
        "csp": {"file": csp_file, "run": ck.get("run"), "step": ck.get("step"), "data_hash": ck.get("data_hash"),
                "figures": "every csp_* metric and detail", "note": note},
        "gen": {"file": gen_file, **before.get("gen", before), "figures": "every other metric"}}
    if history:
        res["history"] = "; ".join(h for h in (gen.get("history"), history) if h)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gen", required=True, help="results file of the ab initio checkpoint (its non-CSP figures)")
    ap.add_argument("--csp-full", required=True, help="bench/generator.py --npz-csp output on the whole test set")
    ap.add_argument("--csp-k20", help="bench/generator.py --npz-csp-k output (k samples; ranked pick as _20x100steps)")
    ap.add_argument("--csp-k8", help="bench/generator.py --npz-csp-k --rank-mlip output whose ranked pick is reported")
    ap.add_argument("--cpu-pair", help="bench/generator.py --npz-csp output at the CPU default, with --reference")
    ap.add_argument("--csp-file", default="qadb/data/checkpoints/generator_csp.pt",
                    help="the CSP checkpoint the figures are filed under (each scored file must come from it)")
    ap.add_argument("--gen-file", default="qadb/data/checkpoints/generator_default.pt")
    ap.add_argument("--note", default="", help="how the CSP checkpoint was trained")
    ap.add_argument("--ranked-settings", default="", help="how the ranked candidates were drawn")
    ap.add_argument("--cpu-settings", default="100 steps, no corrector, coord_noise 0, seed 0, on the CPU")
    ap.add_argument("--history", default="", help="appended to details.history (where older figures are kept)")
    ap.add_argument("--csp-prior", help="bench/generator.py --npz-csp output of samples refined from prototype guesses, "
                                        "with --reference retrieval=GUESSES.npz [diffusion=SAMPLES.npz]")
    ap.add_argument("--prior-settings", default="", help="how the --csp-prior samples were drawn")
    ap.add_argument("--csp-prior-ranked", help="bench/generator.py --npz-csp-k --rank-mlip output of k prior samples "
                                               "per composition (with --csp-prior)")
    ap.add_argument("--out", default="bench/results/generator.json")
    a = ap.parse_args(argv)
    if a.csp_prior_ranked and not a.csp_prior:
        raise SystemExit("error: --csp-prior-ranked goes with --csp-prior")
    optional = ("csp_k20", "csp_k8", "cpu_pair", "csp_prior", "csp_prior_ranked")
    opt = {k: (_read(getattr(a, k)) if getattr(a, k) else None) for k in optional}
    gen, full = _read(a.gen), _read(a.csp_full)
    ck_meta = checkpoint_meta(a.csp_file)
    check_sampled_from(ck_meta, {"--csp-full": full, **{f"--{k.replace('_', '-')}": v for k, v in opt.items()}})
    res = assemble(gen, a.gen, full, **opt, csp_file=a.csp_file, gen_file=a.gen_file, note=a.note,
                   ranked_settings=a.ranked_settings, cpu_settings=a.cpu_settings, history=a.history,
                   csp_ckpt_meta=ck_meta, prior_settings=a.prior_settings)
    write_results(res, Path(a.out))


if __name__ == "__main__":
    main()
