"""Campaign recipes: YAML files in `flows/`, validated against one JSON Schema with one error per bad field.

A recipe names the candidate source, the predictor (validator), the filters, the acquisition
strategy, the labeller (high-fidelity oracle), the hit rule, the budget and the stopping rule.
Every default is the seed paper's value (seed 000 Algorithm 1) unless noted.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from qadb.errors import ConfigError

KINDS = ("qa_genai", "pigen_funnel", "inverse_design", "replay")

_WINDOW = {
    "type": "object", "additionalProperties": False,
    "properties": {"min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]}},
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "qadb campaign recipe",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "kind"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "description": "campaign name (id prefix)"},
        "kind": {"enum": list(KINDS)},
        "description": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "budget": {"type": "number", "exclusiveMinimum": 0, "default": 100,
                   "description": "high-fidelity calls (labeller cost units) the campaign may spend"},
        "max_cycles": {"type": "integer", "minimum": 1, "default": 20},
        "patience": {"type": "integer", "minimum": 1, "default": 3,
                     "description": "stop after this many consecutive cycles without a hit"},
        "property": {"type": "string", "default": "formation_energy_per_atom"},
        "candidates": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "source": {"enum": ["generator", "replay"]},
                "n": {"type": "integer", "minimum": 1, "default": 1000},
                "task": {"enum": ["bandgap", "enthalpy"], "description": "replay: staged multi-fidelity task"},
                "checkpoint": {"type": ["string", "null"]},
                "mode": {"enum": ["gen", "csp"], "default": "gen"},
                "steps": {"type": ["integer", "null"], "minimum": 1},
                "chemsys": {"type": ["string", "null"]},
                "composition": {"type": ["string", "null"]},
                "num_atoms": {"type": ["integer", "null"], "minimum": 1, "maximum": 20,
                              "description": "gen: atoms per cell (default: drawn from the training distribution)"},
                "conditions": {"type": "object", "additionalProperties": {"type": "number"}},
                "guidance": {"type": "object", "additionalProperties": {"type": "number"}},
                "init": {"type": "integer", "minimum": 0, "default": 10,
                         "description": "replay: random high-fidelity calls before the first acquisition"},
            },
        },
        "predict": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "validator": {"enum": ["mfennp", "delta_ensemble"], "default": "mfennp"},
                "checkpoint": {"type": ["string", "null"]},
                "multi_fidelity": {"type": "boolean", "default": True},
                "descriptors": {"type": "boolean", "default": True,
                                "description": "feed the quantum descriptors q to the validator"},
            },
        },
        "filter": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "target": _WINDOW,
                "funnel": {"type": "array", "items": {"enum": ["constraints", "spp", "novelty", "compactness", "mled"]}},
            },
        },
        "select": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "strategy": {"enum": ["divergence", "uncertainty", "low_fidelity", "random", "exploit"],
                             "default": "divergence"},
                "divergence": {"enum": ["abs", "rel", "sgn"], "default": "abs"},
                "weights": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"signal": {"type": "number", "minimum": 0, "maximum": 1},
                                   "diversity": {"type": "number", "minimum": 0, "maximum": 1}},
                },
                "clusters": {"type": "integer", "minimum": 1, "default": 50},
                "top_k": {"type": "integer", "minimum": 1, "default": 20},
                "budget_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1},
                "min_batch": {"type": "integer", "minimum": 1, "default": 1},
            },
        },
        "validate": {
            "type": "object", "additionalProperties": False,
            "required": ["labeller"],
            "properties": {
                "labeller": {"enum": ["replay", "mlip", "pyscf", "vasp"]},
                "settings": {"type": "object"},
                "low_level": {"type": ["string", "null"],
                              "description": "pyscf/vasp: a cheaper level labelled first on every paid candidate "
                                             "(same basis and pseudopotential), so each carries its own two-level "
                                             "discrepancy"},
                "cost": {"type": "number", "exclusiveMinimum": 0, "default": 1},
            },
        },
        "hit": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]},
                "low_min": {"type": ["number", "null"]}, "low_max": {"type": ["number", "null"]},
                "delta_min": {"type": ["number", "null"]}, "delta_max": {"type": ["number", "null"]},
            },
        },
        "inverse": {
            "type": "object", "additionalProperties": False,
            "description": "inverse_design: target property, three screening stages, MAPE probe, generator fine-tune",
            "properties": {
                "target": {"type": "number", "exclusiveMinimum": 0, "description": "target bulk modulus (GPa)"},
                "guidance": {"type": "number", "minimum": 0, "description": "CFG strength on the K condition"},
                "prefilter_tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                        "description": "stage I: keep |K_pred - target| <= this x target"},
                "prefilter_checkpoint": {"type": ["string", "null"]},
                "mlip_tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                   "description": "stage II: keep |K_MLIP - target| <= this x target"},
                "mlip": {"enum": ["chgnet", "sevennet"]},
                "second_mlip": {"enum": ["chgnet", "sevennet"],
                                "description": "stage III where no MP binary matches"},
                "stage2_max": {"type": "integer", "minimum": 0, "description": "stage-II calculations per cycle"},
                "mape_samples": {"type": "integer", "minimum": 1,
                                 "description": "random generated crystals per cycle whose MLIP K gives the MAPE"},
                "eos_points": {"type": "integer", "minimum": 5},
                "relax": {"type": "object", "additionalProperties": False,
                          "properties": {"fmax": {"type": "number", "exclusiveMinimum": 0},
                                         "steps": {"type": "integer", "minimum": 1}}},
                "finetune": {"type": "object", "additionalProperties": False,
                             "properties": {"steps": {"type": "integer", "minimum": 1},
                                            "batch_size": {"type": "integer", "minimum": 2},
                                            "lr": {"type": "number", "exclusiveMinimum": 0},
                                            "new_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                            "replay": {"type": "integer", "minimum": 0}}},
            },
        },
        "retrain": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "validator_every": {"type": "integer", "minimum": 0, "default": 1,
                                    "description": "0 = never (the no-active-learning ablation)"},
                "generator_every": {"type": "integer", "minimum": 0, "default": 5},
            },
        },
    },
}

DEFAULTS: dict[str, Any] = {
    "seed": 0, "budget": 100, "max_cycles": 20, "patience": 3, "property": "formation_energy_per_atom",
    "candidates": {"source": "generator", "n": 1000, "mode": "gen", "init": 10, "conditions": {}, "guidance": {}},
    "predict": {"validator": "mfennp", "multi_fidelity": True, "descriptors": True},
    "filter": {"funnel": ["constraints"]},
    "select": {"strategy": "divergence", "divergence": "abs", "weights": {"signal": 0.7, "diversity": 0.3},
               "clusters": 50, "top_k": 20, "budget_fraction": 0.1, "min_batch": 1},
    "validate": {"settings": {}, "cost": 1},
    "hit": {},
    "retrain": {"validator_every": 1, "generator_every": 5},
}


# seed 003's screens (±30 % pre-filter, ±20 % MLIP) and CPU-sized probe, stage-II and fine-tune budgets
INVERSE_DEFAULTS: dict[str, Any] = {
    "guidance": 2.0, "prefilter_tolerance": 0.3, "prefilter_checkpoint": None, "mlip_tolerance": 0.2,
    "mlip": "chgnet", "second_mlip": "sevennet", "stage2_max": 4, "mape_samples": 8, "eos_points": 5,
    "relax": {"fmax": 0.1, "steps": 200},
    "finetune": {"steps": 40, "batch_size": 16, "lr": 5e-5, "new_fraction": 0.5, "replay": 128},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _error_text(err) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        return f"{where}: unknown field(s): {err.message.split('(')[1].split(' were')[0].split(' was')[0]}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    return f"{where}: {err.message}"


def validate(recipe: dict, where: str = "recipe") -> dict:
    """Check a recipe against the schema; return it merged over the defaults.

    Raises ConfigError listing every bad field ("flows/x.yaml: select.top_k: 0 is less than the minimum of 1").
    """
    import jsonschema

    if not isinstance(recipe, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping, got {type(recipe).__name__}")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(recipe), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(_error_text(e) for e in errors))
    merged = _merge(DEFAULTS, recipe)
    if merged["candidates"]["source"] == "replay" and not merged["candidates"].get("task"):
        raise ConfigError(f"{where}: candidates.task is required when candidates.source is replay")
    if merged["validate"]["labeller"] == "replay" and merged["candidates"]["source"] != "replay":
        raise ConfigError(f"{where}: validate.labeller replay needs candidates.source replay (it reveals held-out labels)")
    if merged["validate"].get("low_level") and merged["validate"]["labeller"] not in ("pyscf", "vasp"):
        raise ConfigError(f"{where}: validate.low_level needs a DFT labeller (pyscf or vasp), "
                          f"not {merged['validate']['labeller']}")
    if merged["kind"] == "inverse_design":
        _check_inverse(merged, where)
    return merged


def _check_inverse(recipe: dict, where: str) -> None:
    """inverse_design needs a target, generated candidates and the stage-III labeller; one line per problem."""
    problems = []
    if (recipe.get("inverse") or {}).get("target") is None:
        problems.append("inverse.target is required for kind inverse_design")
    if recipe["candidates"]["source"] != "generator":
        problems.append("candidates.source must be generator for kind inverse_design")
    if recipe["validate"]["labeller"] != "mlip":
        problems.append("validate.labeller must be mlip for kind inverse_design (stage III: MP DFT where a known "
                        "binary matches, else inverse.second_mlip)")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    from qadb.campaign.inverse import settings

    try:
        settings(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load(path: str | Path) -> dict:
    """Read and validate a recipe file (YAML or JSON)."""
    path = Path(path)
    if not path.exists():
        builtin = Path(__file__).resolve().parents[2] / "flows" / f"{path.stem}.yaml"
        if path.suffix == "" and builtin.exists():
            path = builtin
        else:
            raise ConfigError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return validate(data, where=str(path))


def recipe_hash(recipe: dict) -> str:
    """A stable hash of a validated recipe: the same recipe and seed give the same campaign id."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def campaign_id(recipe: dict) -> str:
    return f"{recipe['name']}-{recipe_hash(recipe)}"
