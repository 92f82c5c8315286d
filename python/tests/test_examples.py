"""The Python examples run (so that they keep working)."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quickstart_runs(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "examples" / "python" / "quickstart.py"))
    mod["main"](str(tmp_path / "store"))
    out = capsys.readouterr().out
    assert "20000 items" in out and "version skew refused" in out


def _run_example(name, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "examples" / "python"))
    try:
        mod = runpy.run_path(str(ROOT / "examples" / "python" / name))
        n = mod["main"](str(tmp_path / "store"))
    finally:
        sys.path.remove(str(ROOT / "examples" / "python"))
    out = capsys.readouterr().out
    assert f"published snapshot {n} with 40000 items in 8 segments" in out


def test_distributed_dask_example_runs(tmp_path, capsys):
    import pytest

    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    _run_example("distributed_dask.py", tmp_path, capsys)


def test_distributed_ray_example_runs(tmp_path, capsys):
    import pytest

    pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]')")
    _run_example("distributed_ray.py", tmp_path, capsys)


def test_distributed_spark_example_runs(tmp_path, capsys):
    import pytest

    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install pyspark; Java 17)")
    _run_example("distributed_spark.py", tmp_path, capsys)
