"""What a run is and how it is kept: the run spec and its resolved configuration (protocols,
tuned settings), the canonical identity behind run ids, and the record format.

May import: `bench.network`, `bench.data`, `bench.evaluation`, `bench.errors`, `methods`."""
