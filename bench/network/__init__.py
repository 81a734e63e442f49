"""The network and how it computes: backbones with the shared hash layer, and the numerics
(threads, oneDNN, conv+BN folding, caches) that make runs fast and reproducible.

May import: `bench.data`, `bench.errors`."""
