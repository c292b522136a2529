"""Feature caches: frozen encoders run once per dataset split; features stored as .npy arrays."""

from finealign.cache.build import build_feature_cache
from finealign.cache.keys import ENV_CACHE, cache_key, default_cache_dir
from finealign.formats.feature_cache import ARRAY_FILES, FORMAT_VERSION, META_FILE, is_complete, open_arrays, read_meta

__all__ = [
    "ARRAY_FILES",
    "ENV_CACHE",
    "FORMAT_VERSION",
    "META_FILE",
    "build_feature_cache",
    "cache_key",
    "default_cache_dir",
    "is_complete",
    "open_arrays",
    "read_meta",
]
