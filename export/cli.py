"""`mnist-export`: export a trained run to ONNX, gate it on parity, publish a new version."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from mnist_serving.common import model_repository
from mnist_serving.common.contract import (
    INT8_MODEL_NAME,
    MODEL_FILENAME,
    MODEL_NAME,
    OPSET,
    SIDECAR_FILENAME,
    contract_dict,
)
from mnist_serving.common.mnist_data import DataError, Mnist, load_mnist
from mnist_serving.common.model_repository import env_flag
from mnist_serving.export.onnx_export import ExportError, export_onnx
from mnist_serving.export.parity import ParityError, ParityReport, check_parity
from mnist_serving.export.quantize import compare, quantize_int8
from mnist_serving.export.serving_model import load_serving_model
from mnist_serving.train.model import CHECKPOINT


def newest_run(runs_dir: Path) -> Path:
    runs = sorted(
        (p for p in runs_dir.glob("*") if (p / CHECKPOINT).is_file()),
        key=lambda p: (p / CHECKPOINT).stat().st_mtime,
    )
    if not runs:
        raise FileNotFoundError(f"no trained run (with {CHECKPOINT}) under {runs_dir}/; run mnist-train")
    return runs[-1]


def _sidecar(
    version: int,
    run_dir: Path,
    config: dict,
    parity: dict,
    test_accuracy: float,
    data: Mnist,
    extra: dict | None = None,
) -> dict:
    return {
        "version": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
        "recipe": config.get("recipe"),
        "seed": config.get("seed"),
        "data_sha256": data.sha256(),
        "test_accuracy": test_accuracy,
        "parity": parity,
        "opset": OPSET,
        "contract": contract_dict(),
        **(extra or {}),
    }


def _with_metadata(proto: onnx.ModelProto, sidecar: dict) -> bytes:
    del proto.metadata_props[:]
    for key in ("name", "version", "created", "data_sha256", "test_accuracy"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(sidecar[key])
    for key in ("recipe", "parity", "contract"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(sidecar[key])
    proto.producer_name = "mnist-serving"
    return proto.SerializeToString()


def _publish(
    repository: Path, name: str, proto: onnx.ModelProto, make_sidecar: Callable[[int], dict]
) -> tuple[int, Path]:
    def write(staging: Path, version: int) -> None:
        sidecar = {"name": name, **make_sidecar(version)}
        data = _with_metadata(proto, sidecar)
        # model_sha256 names the exact bytes published (with metadata).
        sidecar["model_sha256"] = hashlib.sha256(data).hexdigest()
        (staging / MODEL_FILENAME).write_bytes(data)
        (staging / SIDECAR_FILENAME).write_text(json.dumps(sidecar, indent=2) + "\n")

    return model_repository.publish(repository, name, write)


def export_run(
    run_dir: Path,
    repository: Path,
    data: Mnist,
    quantize: str | None = None,
    transform: Callable[[onnx.ModelProto], None] | None = None,
) -> dict:
    """Export, gate and publish one run; ``transform`` (tests only) alters the graph first.

    Raises ParityError (nothing published) when onnxruntime disagrees with PyTorch.
    """
    config = json.loads((run_dir / "config.json").read_text())
    recipe = config["recipe"]
    model = load_serving_model(str(run_dir / CHECKPOINT), recipe["normalize_mean"], recipe["normalize_std"])
    proto = export_onnx(model)
    if transform is not None:
        transform(proto)
    onnx_bytes = proto.SerializeToString()
    report: ParityReport = check_parity(onnx_bytes, model, data.x_test, data.y_test)
    print(report.describe())
    if not report.passed:
        raise ParityError(report.describe())
    result = {"parity": report.as_dict(), "test_accuracy": report.onnx_accuracy}
    version, path = _publish(
        repository,
        MODEL_NAME,
        proto,
        lambda v: _sidecar(v, run_dir, config, report.as_dict(), report.onnx_accuracy, data),
    )
    result.update(version=version, path=str(path / MODEL_FILENAME))
    print(
        f"published {MODEL_NAME} version {version}: {path / MODEL_FILENAME} "
        f"(test accuracy {report.onnx_accuracy:.4f})"
    )
    if quantize == "int8":
        int8_bytes = quantize_int8(onnx_bytes)
        quant = compare(onnx_bytes, int8_bytes, data.x_test, data.y_test)
        print(quant.describe())
        result["int8"] = quant.as_dict()
        if quant.passed:
            int8_proto = onnx.load_from_string(int8_bytes)
            v8, p8 = _publish(
                repository,
                INT8_MODEL_NAME,
                int8_proto,
                lambda v: _sidecar(
                    v,
                    run_dir,
                    config,
                    report.as_dict(),
                    quant.int8_accuracy,
                    data,
                    {"quantization": quant.as_dict(), "fp32_version": version},
                ),
            )
            result["int8"].update(version=v8, path=str(p8 / MODEL_FILENAME))
            print(f"published {INT8_MODEL_NAME} version {v8}: {p8 / MODEL_FILENAME}")
        else:
            print("int8 model not published: it does not keep the fp32 model's answers")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-export", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "run_dir", nargs="?", type=Path, help="run directory to export (default: the newest under --runs-dir)"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX directory (else cache / download)")
    parser.add_argument("--quantize", choices=["int8"], help="also publish a quantised variant")
    parser.add_argument("--report", type=Path, help="write the export report as JSON here")
    parser.add_argument(
        "--skip-if-published",
        action="store_true",
        help="do nothing (exit 0) when --model-repository already has a published model",
    )
    parser.add_argument(
        "--new-version",
        action="store_true",
        default=env_flag("MNIST_SERVING_NEW_VERSION"),
        help="publish even when --skip-if-published finds a model (env MNIST_SERVING_NEW_VERSION=1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip_if_published and not args.new_version:
        published = model_repository.published_model(args.model_repository, MODEL_NAME)
        if published is not None:
            print(f"model already published ({published}); skipping export")
            return 0
    try:
        run_dir = args.run_dir or newest_run(args.runs_dir)
        data = load_mnist(args.data_dir)
        result = export_run(run_dir, args.model_repository, data, quantize=args.quantize)
    except (FileNotFoundError, DataError, ExportError) as exc:
        print(f"mnist-export: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"mnist-export: parity gate failed, nothing published: {exc}", file=sys.stderr)
        return 3
    if args.report:
        args.report.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    np.set_printoptions(suppress=True)
    raise SystemExit(main())
