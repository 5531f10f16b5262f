"""Generated protobuf and gRPC code for the kubelet pod-resources API (package v1).
Never edit by hand: run ``python scripts/gen_proto.py``."""
