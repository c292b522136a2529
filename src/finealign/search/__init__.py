"""Retrieval against stored galleries: FAISS first stage over global vectors, tokens in a float16
memory map read only for the shortlisted items, re-ranked by a registered aligner.

    from finealign.search import Gallery, write_gallery
    write_gallery("gal/", tokens, mask, pooled, modality="text", feature_source="minilm",
                  indexes={"flat": IndexSpec("flat"), "ivf": IndexSpec("ivf", ivf_probe=32)})
    Gallery("gal/", index="ivf").query(image_tokens, top_k=10, rerank=create_aligner("mean_max"))
"""

from finealign.ann import IndexSpec
from finealign.search.gallery import Gallery, GalleryWriter, SearchResult, add_index, write_gallery
from finealign.search.integrity import verify_gallery
from finealign.search.manifest import read_manifest
from finealign.search.store import TokenStore

__all__ = ["Gallery", "GalleryWriter", "IndexSpec", "SearchResult", "TokenStore", "add_index", "read_manifest",
           "verify_gallery", "write_gallery"]  # fmt: skip
