"""Run a console app in-process, as its console script would, and read what it printed and its exit status."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def run_console(main: Callable[[], None], args: list[str], capsys, monkeypatch, cwd: Path) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``main()`` with ``sys.argv = [app, *args]``, run in ``cwd``."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["scoresde-app", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        from hydra.core.global_hydra import GlobalHydra
        GlobalHydra.instance().clear()
    assert "HYDRA_FULL_ERROR" not in os.environ
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, app: str, *needles: str) -> None:
    """Exit status 2, one line ``scoresde-<app>: error: ...`` on stderr naming every needle, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit status {code}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"scoresde-{app}: error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
