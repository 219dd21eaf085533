"""Speculative decoding: n-gram (prompt lookup) drafts, verified by the target model in one pass."""
