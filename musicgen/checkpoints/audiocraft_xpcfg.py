"""Reading audiocraft's `xp.cfg`, and the wording shared by the LM and EnCodec state checks.

An exported audiocraft file keeps its hydra config as an unresolved YAML string (`xp.cfg`). `_XpCfg`
reads values out of it, resolving OmegaConf's `${a.b}` interpolations, and refuses settings this engine
does not run; `_as_int` / `_as_float` accept the numbers YAML 1.1 returns as text. `audiocraft_lm` and
`audiocraft_encodec` both translate an `xp.cfg` with these, and both report a state dict that does not
fit with `_mismatch`, so they live here, below both.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

_MISSING = object()


class _XpCfg:
    """Read access to an `xp.cfg` mapping, resolving the `${a.b}` interpolations OmegaConf leaves in it.

    `audiocraft.utils.export` dumps the config without resolving it, so values such as
    `chroma_stem.sample_rate: ${sample_rate}` arrive as strings.
    """

    def __init__(self, root: dict, path: Path):
        self.root = root
        self.path = path

    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.root
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise CheckpointError(f"{self.path}: xp.cfg has no '{key}'")
                return default
            node = node[part]
        return self._resolve(node, key, 0)

    def _resolve(self, value: Any, key: str, depth: int) -> Any:
        if depth > 20:
            raise CheckpointError(f"{self.path}: xp.cfg '{key}' has interpolations that do not terminate")
        if isinstance(value, dict):
            return {k: self._resolve(v, f"{key}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, key, depth) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = re.fullmatch(r"\$\{([A-Za-z0-9_.]+)\}", value)
        if whole:  # keeps the target's type (an int stays an int)
            return self._resolve(self.get(whole.group(1)), key, depth + 1)

        def substitute(m: re.Match) -> str:
            return str(self._resolve(self.get(m.group(1)), key, depth + 1))

        out = re.sub(r"\$\{([A-Za-z0-9_.]+)\}", substitute, value)
        if "${" in out:
            raise CheckpointError(
                f"{self.path}: xp.cfg '{key}' = {value!r} uses an interpolation this reader cannot resolve"
            )
        return out

    def get_int(self, key: str, default: Any = _MISSING) -> int:
        return _as_int(self.get(key, default), f"{self.path}: xp.cfg '{key}'")

    def get_float(self, key: str, default: Any = _MISSING) -> float:
        return _as_float(self.get(key, default), f"{self.path}: xp.cfg '{key}'")

    def require(self, key: str, default: Any, expected: Any, why: str) -> None:
        """Refuses a setting this engine does not implement, so a model is never run with the wrong maths."""
        value = self.get(key, default)
        if isinstance(expected, float):
            ok = _is_number(value) and math.isclose(float(value), expected)
        else:
            ok = value == expected
        if not ok:
            raise CheckpointError(
                f"{self.path}: xp.cfg '{key}' is {value!r}, but this engine only runs {expected!r} ({why})"
            )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_float(value: Any, what: str) -> float:
    # YAML 1.1 reads '1e-4' (no dot) as a string, so numbers may come back as text
    if not _is_number(value):
        raise CheckpointError(f"{what} is {value!r}, expected a number")
    return float(value)


def _as_int(value: Any, what: str) -> int:
    number = _as_float(value, what)
    if not number.is_integer():
        raise CheckpointError(f"{what} is {value!r}, expected an integer")
    return int(number)


# ---------------------------------------------------------------------------------------- state checks


def _mismatch(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    def some(items: list[str]) -> str:
        shown = ", ".join(items[:8])
        return shown + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing {some(missing)}")
    if unexpected:
        parts.append(f"unexpected {some(unexpected)}")
    if wrong:
        parts.append(f"wrong shape {some(wrong)}")
    return "; ".join(parts)
