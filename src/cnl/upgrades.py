"""Files written by earlier versions of cnl, read as today's: the one module that knows old
names and entries that were missing. Everything else reads files as they are written today.

Which versions wrote what (the commit that changed it; versions before it wrote the old form):

```
file                              old form                          read as                  changed in
settings (config.yaml, presets,   no_wd_norm_bias: true             wd_norm_bias: false      3bdfd21
  a checkpoint's config)          resume: true / false              resume: null             38c09a7
                                  weights: null (random weights)    weights: none            5ed5a9a
weights (checkpoints, .pth,       nl.*, cnl.* (the paper's ResNets) plug.nl.*, plug.cnl.*    bdb8b6a
  safetensors, Hub folders)
training checkpoints              no checksum                       read unverified          e5ccfe7
                                  no step                           0 (an epoch's end)       ba0671c
                                  no final, rates                   final from metrics, []   eaf7f0a
                                  no kept (--keep-best)             []                       9ae4811
summary.json, metrics.jsonl       fewer fields                      None (engine/records.py) a6b105c on
```

Nothing here imports torch: the parser reads settings with it.
"""

from __future__ import annotations

from typing import Any, TypeVar

# Settings renamed since runs were written: old name -> (new name, how the value maps).
RENAMED = {"no_wd_norm_bias": ("wd_norm_bias", lambda value: not value)}
# The modules of the paper's ResNets, before they were plugged like every backbone's.
OLD_PREFIXES = {"nl.": "plug.nl.", "cnl.": "plug.cnl."}

Value = TypeVar("Value")


def settings(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as written by any earlier version, under today's names and values."""
    values = dict(values)
    for old, (new, convert) in RENAMED.items():
        if old in values:
            old_value = values.pop(old)
            if new not in values and old_value is not None:
                values[new] = convert(old_value)
    if isinstance(values.get("resume"), bool):
        values["resume"] = None
    if "weights" in values and values["weights"] in (None, "null", "None"):
        values["weights"] = "none"  # random weights: cnl.models.names.NO_WEIGHTS, below this layer's reach
    return values


def state_keys(state: dict[str, Value]) -> dict[str, Value]:
    """A state dict with the keys of weights written before ``plug.`` renamed to today's."""
    renamed = {}
    for key, value in state.items():
        old = next((prefix for prefix in OLD_PREFIXES if key.startswith(prefix)), None)
        renamed[OLD_PREFIXES[old] + key[len(old) :] if old else key] = value
    return renamed


def checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint's entries (its checksum verified or absent), with those an
    earlier version did not write filled in as that version behaved."""
    state = dict(state)
    state.setdefault("step", 0)  # saved only at the end of an epoch
    state.setdefault("final", {key: state.get("metrics", {}).get(key) for key in ("top1", "top5")})
    state.setdefault("rates", [])
    state.setdefault("kept", [])
    return state
