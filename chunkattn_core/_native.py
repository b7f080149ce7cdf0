"""Loads the native module chunkattn_core._C once, with a clear error when it was not built."""

try:
    from chunkattn_core import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "chunkattn_core._C is not built: run `make build` (or `python setup.py build_ext --inplace`) "
        f"in the repository root ({exc})"
    ) from exc

__all__ = ["_C"]
