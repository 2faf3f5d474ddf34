"""The gRPC edge: protobuf <-> ``serving.tensors`` (codec), the KServe V2
servicer, the single error -> status table, and the server's assembly."""
