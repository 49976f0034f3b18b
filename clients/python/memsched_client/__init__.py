"""Python client for the memsched gRPC service."""
