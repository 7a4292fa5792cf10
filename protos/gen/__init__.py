"""Generated gRPC stubs: produced by `python -m mnist_serving.protos.generate`, never edited."""
