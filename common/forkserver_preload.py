"""Imported by the decode pools' fork server only (``set_forkserver_preload``): the fork
server dies with the process that started it, so neither it nor its workers are orphaned.
Never import it anywhere else: the importing process would die with its own parent."""

from mnist_serving.common.processes import die_with_parent

die_with_parent()
