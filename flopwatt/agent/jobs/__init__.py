"""Measurement jobs the agent runs: model zoo, FLOP/MAC counting (and GEMM, model runs)."""
