"""Imported by the decode pool's fork server only (``set_forkserver_preload``): it ignores
SIGTERM and SIGINT, as the workers it forks do, so a signal sent to the server's whole process
group (``timeout``, make, a terminal's Ctrl-C) reaches only the server, which drains and then
stops the pool itself. Never import it anywhere else: the importing process would ignore both.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
