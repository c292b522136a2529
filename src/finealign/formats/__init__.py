"""On-disk and on-file formats shared by data, encoders, cache and search, below all of them:

- `feature_cache`: a feature-cache entry (files, dtypes, checksummed meta.json, checked opening),
  written by `cache/build.py`, read by `data/features.py` and the search galleries;
- `images`: opening an image file as RGB with an error naming the file, for the datasets and the
  image encoders' preprocessing.

Nothing here imports a finealign package above errors/safe_paths, so data, encoders and cache can
all use it without reaching into one another.
"""
