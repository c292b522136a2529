"""The citable comparison (see docs/protocol.md): every method tuned on validation with an equal
budget, its best config retrained with seeds shared by all methods, tested once; paired bootstrap
confidence intervals against a reference; costs with their spread; provenance on every run."""
