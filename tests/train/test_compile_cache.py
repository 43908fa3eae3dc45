"""The persistent compilation cache switched on and off again (cxrjax.train.compile_cache)."""

import jax
import jax.numpy as jnp

from cxrjax.train.compile_cache import disable_compilation_cache, enable_compilation_cache


def test_enable_stores_compiled_programs_and_disable_stops_it(tmp_path):
    cache = enable_compilation_cache(tmp_path / "cache")
    try:
        assert jax.config.jax_compilation_cache_dir == str(cache)
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(5.0)).block_until_ready()
        stored = sorted(p.name for p in cache.iterdir())
        assert stored  # the program was written
    finally:
        disable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir is None
    jax.jit(lambda x: jnp.cos(x) * 5.0 - 2.0)(jnp.arange(7.0)).block_until_ready()
    assert sorted(p.name for p in cache.iterdir()) == stored  # nothing written after disabling
