import subprocess
import sys

from phaze.cli import main
from phaze.errors import UserError


def test_help_lists_commands(capsys):
    assert main([]) == 2
    assert "usage: phaze" in capsys.readouterr().out


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):

    def boom(args):
        raise UserError("must be positive, got -1", field="mbs", fix="pass --mbs 1 or more")

    monkeypatch.setattr("phaze.cli.build_parser", lambda: _parser_with(boom))
    assert main(["x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["phaze: error: mbs: must be positive, got -1; fix: pass --mbs 1 or more"]


def _parser_with(func):
    import argparse

    p = argparse.ArgumentParser(prog="phaze")
    sub = p.add_subparsers()
    sub.add_parser("x").set_defaults(func=func)
    return p


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "phaze", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("phaze ")
