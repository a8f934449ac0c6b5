"""MF-ENNP multi-fidelity validator (seed 000 Sec. 2.3): deep ensemble, E_MF/sigma_MF, divergence.

Public API (lazy, so `net`/`train`/`uncertainty` stay importable with only torch/numpy):
`train_validator`, `predict`, `load_validator`, `evaluate` (api); `aggregate`, `divergence`, `ece`
(uncertainty); `staged_formation_records` (data).
"""

_API = {"train_validator", "predict", "load_validator", "evaluate", "divergence_from_baseline"}
_UNC = {"aggregate", "divergence", "ece", "fit_sigma_scale"}


def __getattr__(name):
    if name in _API:
        from qadb.models.validator import api

        return getattr(api, name)
    if name in _UNC:
        from qadb.models.validator import uncertainty

        return getattr(uncertainty, name)
    if name == "staged_formation_records":
        from qadb.models.validator.data import staged_formation_records

        return staged_formation_records
    raise AttributeError(name)
