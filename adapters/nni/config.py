"""NNI ``config_list`` validation for :class:`adapters.nni.CUTPruner` (needs NNI installed).

Re-exported by :mod:`adapters.nni`; import from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from nni.compression.base.config import default_config_schema, trans_legacy_config_list
from schema import SchemaError

from cut_plugin.vocabulary import check_number

__all__ = ["CONFIG_KEYS", "GRANULARITIES", "Granularity", "check_config_list"]

Granularity = Literal["default", "out_channel"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
CONFIG_KEYS = (
    "op_types", "op_names", "op_names_re", "exclude_op_types", "exclude_op_names", "exclude_op_names_re",
    "target_names", "target_settings", "sparse_ratio", "max_sparse_ratio", "min_sparse_ratio",
    "global_group_id", "dependency_group_id", "internal_metric_block", "granularity", "apply_method", "align",
)  # fmt: skip


def _check_setting(setting: Mapping[str, Any], where: str) -> None:
    if "sparse_threshold" in setting:
        raise ValueError(
            f"{where}: CUTPruner takes no 'sparse_threshold' (its metric is a rank, not a score); "
            "give 'sparse_ratio'"
        )
    granularity = setting.get("granularity", "default")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"{where}: granularity must be one of {list(GRANULARITIES)} ('default' = element-wise as "
            f"the paper, 'out_channel' = channels), got {granularity!r}"
        )
    for key in ("sparse_ratio", "max_sparse_ratio", "min_sparse_ratio"):
        value = setting.get(key)
        if value is None:
            continue
        check_number(f"{where}: {key}", value, low=0.0, high=1.0)
    if setting.get("sparse_ratio") == 1.0:
        raise ValueError(f"{where}: sparse_ratio 1.0 would mask everything; use e.g. 0.5")


def check_config_list(config_list: Any) -> list[dict[str, Any]]:
    """Return ``config_list`` (legacy keys translated, ratios as floats) or raise naming the entry."""
    if isinstance(config_list, Mapping) or not isinstance(config_list, Sequence) or not config_list:
        raise TypeError(
            "config_list must be a non-empty list of dicts, e.g. "
            f"[{{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}}], got {config_list!r}"
        )
    for index, config in enumerate(config_list):
        if not isinstance(config, Mapping):
            raise TypeError(f"config_list[{index}] must be a dict, got {type(config).__name__}")
    configs = trans_legacy_config_list([dict(c) for c in config_list])
    schema = default_config_schema("pruning")
    for index, config in enumerate(configs):
        where = f"config_list[{index}]"
        unknown = [k for k in config if k not in CONFIG_KEYS]
        if unknown and unknown != ["sparse_threshold"]:
            raise ValueError(
                f"{where} has unknown key(s) {unknown}; valid keys are {list(CONFIG_KEYS)}"
            )
        for key in ("sparse_ratio", "max_sparse_ratio", "min_sparse_ratio"):
            if isinstance(config.get(key), int) and not isinstance(config[key], bool):
                config[key] = float(config[key])
        _check_setting(config, where)
        for target, setting in (config.get("target_settings") or {}).items():
            if isinstance(setting, Mapping):
                _check_setting(setting, f"{where}['target_settings'][{target!r}]")
        try:
            schema.validate(config)
        except SchemaError as error:
            raise ValueError(f"{where} is not a valid NNI pruning config: {error}") from None
    return configs
