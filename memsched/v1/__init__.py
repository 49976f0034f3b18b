"""Generated protobuf and gRPC code for the memsched.v1 contract; never edit, run tools/gen_protos.py."""
