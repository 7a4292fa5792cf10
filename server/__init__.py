"""The gRPC inference server (needs the [serve] extra; never imports torch)."""
