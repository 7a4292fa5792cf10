"""One server process that shares its port with others (SO_REUSEPORT), as each of
``--workers``' processes does, started on its own: what a second replica on the same address
looks like to a client. Usage: python reuseport_server.py MNIST-SERVE-FLAGS..."""

import sys

from mnist_serving.server import logs
from mnist_serving.server.app import serve
from mnist_serving.server.config import load_config

if __name__ == "__main__":
    config = load_config(sys.argv[1:])
    logs.configure(config.log_level, config.log_format)
    sys.exit(serve(config, reuse_port=True))
