"""The Python examples run (so that they keep working)."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quickstart_runs(tmp_path, capsys):
    mod = runpy.run_path(str(ROOT / "examples" / "python" / "quickstart.py"))
    mod["main"](str(tmp_path / "store"))
    out = capsys.readouterr().out
    assert "20000 items" in out and "version skew refused" in out
