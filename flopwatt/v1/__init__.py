"""Generated protobuf and gRPC code for package flopwatt.v1. Never edit by hand: run
``python scripts/gen_proto.py``."""
