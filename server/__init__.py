"""The gRPC inference server (needs the [serve] extra; never imports torch)."""

import os

# The server does no linear algebra in numpy (onnxruntime runs the model on threads of its own),
# yet OpenBLAS starts a thread per core when numpy is imported, in the server and in each decode
# process, and they spin for about 0.1 CPU-s at every start. Set before any module here imports
# numpy; an operator's own setting stands.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
