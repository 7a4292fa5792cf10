"""The model repository's version numbers."""

import shutil

from mnist_serving.common import model_repository
from mnist_serving.common.contract import MODEL_FILENAME, SIDECAR_FILENAME


def _write(directory, version):
    (directory / MODEL_FILENAME).write_bytes(b"model %d" % version)
    (directory / SIDECAR_FILENAME).write_text("{}")


def test_a_deleted_version_number_is_never_reused(tmp_path):
    assert [model_repository.publish(tmp_path, "mnist", _write)[0] for _ in range(2)] == [1, 2]
    shutil.rmtree(tmp_path / "mnist" / "2")  # an operator rolls back by deleting version 2
    version, path = model_repository.publish(tmp_path, "mnist", _write)
    assert version == 3 and path == tmp_path / "mnist" / "3"
    assert model_repository.list_versions(tmp_path, "mnist") == [1, 3]
    shutil.rmtree(tmp_path / "mnist" / "3")
    shutil.rmtree(tmp_path / "mnist" / "1")
    assert model_repository.publish(tmp_path, "mnist", _write)[0] == 4


def test_versions_published_before_the_record_existed_still_count(tmp_path):
    (tmp_path / "mnist" / "7").mkdir(parents=True)
    _write(tmp_path / "mnist" / "7", 7)
    assert model_repository.publish(tmp_path, "mnist", _write)[0] == 8
