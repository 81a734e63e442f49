"""Data: dataset cards (`datasets/*.yaml`), the image sources behind them (files, generated
mosaics and pairs), and the seeded splits every run draws its query, train, validation and
database indices from.

May import: `bench.errors` and the standard scientific stack. Nothing else of bench."""
