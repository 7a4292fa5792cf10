"""Client library and CLI (needs the [client] extra; never imports torch or onnxruntime)."""
