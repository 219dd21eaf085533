"""The bundled model's shapes (SmolLM2-135M), for the kernel benches."""

HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 576, 1536, 49152, 9, 3, 64, 16
