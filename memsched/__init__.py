"""Generated code of the memsched protobuf contract."""
