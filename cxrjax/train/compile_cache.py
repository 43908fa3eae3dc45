"""JAX's persistent compilation cache, for the many similar runs of an experiment.

On CPU, compiling a train step takes seconds to tens of seconds; an experiment grid runs
the same network over and over (seeds, early stopping on/off), and a resumed run
compiles again in its new process. With the cache on, every compiled executable is
stored under ``path`` and reused by any later process with the same program.

The cache is process-wide JAX configuration: once enabled it stays on for the process.
"""

from __future__ import annotations

from pathlib import Path

import jax


def enable_compilation_cache(path: str | Path, *, min_compile_time_secs: float = 0.0) -> Path:
    """Store and reuse compiled executables under ``path`` (created if missing)."""
    path = Path(path).expanduser().absolute()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _reset_cache_decision()
    return path


def disable_compilation_cache() -> None:
    """Switch the persistent cache off again (the inverse of :func:`enable_compilation_cache`),
    for a caller that must not leave it on for the rest of the process (a test module)."""
    jax.config.update("jax_compilation_cache_dir", None)
    _reset_cache_decision()


def _reset_cache_decision() -> None:
    # JAX decides once per process whether the cache is used, at the first compile; reset
    # that decision so that enabling or disabling it after something was compiled works.
    try:
        from jax._src import compilation_cache as _cc

        _cc.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        pass
