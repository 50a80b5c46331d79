"""One command vocabulary: the shared options, their old spellings, and an instant --help."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vilalign
from vilalign.cli import build_parser, main
from vilalign.commands import HelpFormatter, check_device, parse_overrides, run_file_overrides

RUNS = {"--output-dir", "--set", "--device", "--threads", "--no-progress"}
# Which shared options each command takes. A new command must be added here, so that
# someone decides which of the shared options apply to it.
SHARED = {
    "demo": RUNS,
    "pretrain": RUNS,
    "finetune": RUNS,
    "run": RUNS,
    "tune": RUNS,
    "analyse": RUNS,
    "attention": RUNS,
    "explain": RUNS,
    "predict": RUNS - {"--set"},  # reads a checkpoint: no run file or preset to override
    "report": {"--output-dir"},
    "info": {"--set"},
    "data": set(),
    "data ids": set(),
    "data list": set(),
    "cache": set(),
}
# Spellings of an output folder that no command may show any more.
OLD = {"--run-dir", "--out", "--dir"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every registered command (nested ones as 'data ids'), aliases once."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                seen: set[int] = set()
                for name, sub in action.choices.items():
                    if id(sub) not in seen:  # an alias maps to the same parser
                        seen.add(id(sub))
                        found[f"{prefix}{name}"] = sub
                        walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return found


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings
    }


COMMANDS = commands()


def test_every_command_is_declared():
    assert set(COMMANDS) == set(SHARED)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_takes_the_shared_options_that_apply(name):
    shown = visible_options(COMMANDS[name])
    assert shown & (RUNS | OLD) == SHARED[name]
    assert {"-v", "--verbose"} <= shown  # after the command as well as before it


@pytest.mark.parametrize("flag", sorted(RUNS))
def test_a_shared_option_means_the_same_everywhere(flag):
    actions = [options(p)[flag] for p in COMMANDS.values() if flag in options(p)]
    assert len(actions) >= 2
    kinds = {(type(a), a.dest, a.type, a.nargs, a.metavar) for a in actions}
    assert len(kinds) == 1, kinds


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_showing_its_default(name):
    parser = COMMANDS[name]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue  # (a sub-command list: each sub-command has its own help)
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        trivial = action.default in (None, argparse.SUPPRESS, False, True, [])
        if action.option_strings and action.nargs != 0 and not trivial:
            assert f"default: {action.default}" in text, (name, action.option_strings)


def test_help_writes_a_list_default_as_typed_and_leaves_an_empty_one_out():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["pretrain", "grid"], help="run kinds")
    p.add_argument("--only", default="", help="comma list (default: every one)")
    p.add_argument("--share", type=float, default=0.5, help="share, in %%")
    text = " ".join(p.format_help().split())
    assert "run kinds (default: pretrain grid)" in text
    assert "comma list (default: every one) --share" in text  # nothing appended
    assert "share, in % (default: 0.5)" in text


ALIASES = [
    (["analyse", "--preset", "tiny", "--run-dir", "x"], "--run-dir", "output_dir"),
    (["attention", "--preset", "tiny", "--run-dir", "x"], "--run-dir", "output_dir"),
    (["explain", "--preset", "tiny", "--ids", "a", "--run-dir", "x"], "--run-dir", "output_dir"),
    (["pretrain", "f.yaml", "--run-dir", "x"], "--run-dir", "output_dir"),
    (["finetune", "f.yaml", "--run-dir", "x"], "--run-dir", "output_dir"),
    (["report", "d", "--out", "x"], "--out", "out_file"),
    (["cache", "--dir", "x"], "--dir", "cache_dir"),
]


@pytest.mark.parametrize(("argv", "old", "dest"), ALIASES, ids=lambda v: str(v))
def test_old_spellings_still_work_hidden_and_warn(argv, old, dest):
    parser = build_parser()
    with pytest.warns(FutureWarning, match=f"{old} is deprecated.*use --"):
        args = parser.parse_args(argv)
    assert getattr(args, dest) == Path("x")
    assert old not in visible_options(COMMANDS[argv[0]])


def test_main_logs_the_deprecation_as_one_line(tmp_path, caplog):
    assert main(["cache", "--dir", str(tmp_path)]) == 0  # and the old spelling still works
    (record,) = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert record.levelname == "WARNING" and "--dir" in record.getMessage()


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["info"], False),
        (["-v", "info"], True),
        (["info", "-v"], True),
        (["data", "ids", "easyvqa", "test", "-v"], True),
    ],
)
def test_verbose_before_or_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_analyze_is_analyse():
    from vilalign.commands import analyse

    args = build_parser().parse_args(["analyze", "--preset", "tiny"])
    assert args.handler is analyse.run


@pytest.mark.parametrize("good", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_spellings_accepted(good):
    assert build_parser().parse_args(["analyse", "--preset", "t", "--device", good]).device == good


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda1", ""])
def test_device_misspelt_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["analyse", "--preset", "t", "--device", bad])
    assert exit_.value.code == 2
    assert "argument --device" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_threads_needs_a_positive_number(bad):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "e.yaml", "--threads", bad])


def test_device_that_is_not_here_is_named():
    import torch

    assert check_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert check_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: no CUDA device"):
            check_device("cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"has {n} CUDA device"):
            check_device(f"cuda:{n}")


def test_set_overrides_parse_yaml_values():
    got = parse_overrides(["train.epochs=2", "model.coattention_layers=[1]", "data.name=easyvqa"])
    assert got == {
        "train": {"epochs": 2},
        "model": {"coattention_layers": [1]},
        "data": {"name": "easyvqa"},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ValueError, match=r"--set train.epochs: '\[1' is not a YAML value"):
        parse_overrides(["train.epochs=[1"])


def test_device_and_no_progress_become_the_run_files_fields():
    args = build_parser().parse_args(
        [
            "tune",
            "e.yaml",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "finetune.train.device=auto",
        ]
    )
    got = run_file_overrides(args, ["pretrain.train", "finetune.train"])
    assert got["pretrain"]["train"] == {"device": "cpu", "progress": False}
    assert got["finetune"]["train"] == {"device": "auto", "progress": False}  # --set wins
    args = build_parser().parse_args(["finetune", "f.yaml"])
    assert run_file_overrides(args, ["train"]) == {}  # nothing given: the file decides


def test_bad_input_is_one_line_exit_2_and_a_traceback_with_v(capsys):
    argv = ["info", "--set", "data.name=x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "vilalign info: error: --set data: only the preset's model.* fields can be set here"
    )
    with pytest.raises(ValueError, match=r"model\.\* fields"):
        main(["-v", *argv])


HEAVY = ("torch", "transformers", "timm")
HELP_SCRIPT = """
import contextlib, io, json, sys
from vilalign.cli import main
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*argv, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0, argv
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _env() -> dict[str, str]:
    src = str(Path(vilalign.__file__).parents[1])  # this checkout's package
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_help_imports_no_torch():
    """`vilalign --help` and every `vilalign CMD --help` load none of the heavy stack (they
    take what starting Python takes, not the ~2-8 s of importing torch)."""
    argvs = [[], *[name.split() for name in COMMANDS], ["analyze"]]
    out = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, json.dumps(argvs)],
        capture_output=True, text=True, env=_env(), check=True, timeout=120,
    )  # fmt: skip
    loaded = set(json.loads(out.stdout))
    assert "vilalign" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)
    # the installed entry point's way in: python -m vilalign
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vilalign", "--help"],
        capture_output=True, text=True, env=_env(), check=True, timeout=120,
    )  # fmt: skip
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()}
    assert "vilalign.cli" in imported and "usage: vilalign" in run.stdout
    assert not {m.split(".")[0] for m in imported} & set(HEAVY)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "{file}", "--set", "grid.seedz=[1]"], "grid.seedz: unknown field"),
        (["tune", "{file}", "--set", "tune.n_trials=0"], "tune.n_trials: Input should be"),
        (["demo", "--set", "analysis.n_samples=2"], "analysis.n_samples: Input should be"),
        (["demo", "--set", "output_dir=x"], "--set output_dir: use --output-dir"),
    ],
)
def test_set_reaches_the_experiment_file(argv, message, tmp_path, capsys):
    """--set on run / tune / demo changes the experiment that is validated (and run)."""
    file = tmp_path / "e.yaml"
    file.write_text("name: e\n")
    assert main([a.replace("{file}", str(file)) for a in argv]) == 2
    assert message in capsys.readouterr().err


class _Stop(Exception):
    """Raised by the spy once the experiment reaching the runner has been seen."""


@pytest.mark.parametrize("command", ["run", "demo"])
def test_no_progress_hides_the_training_bars_of_a_grid(command, tmp_path, monkeypatch):
    """`run`/`demo --no-progress` reach every run's train.progress (once they hid only the
    grid's bar and each epoch still drew its own); the field is not part of a cell's
    identity, so finished cells stay finished (tests/experiments: the rerun over a grid)."""
    from tests.experiments.conftest import tiny_experiment

    import vilalign.experiments.demo as demo
    import vilalign.experiments.runner as runner
    from vilalign.experiments.spec import expand_grid

    seen = []

    def spy(exp, *args, **kwargs):
        seen.append(exp)
        raise _Stop

    monkeypatch.setattr(runner, "run_experiment", spy)
    monkeypatch.setattr(demo, "run_experiment", spy)
    monkeypatch.setattr(demo, "tracker_factory", lambda *a, **k: None)
    file = tmp_path / "exp.json"
    shown = {"train": {"progress": True}}  # (the tiny test grid hides its bars)
    exp = tiny_experiment(tmp_path / "out", pretrain=shown, finetune=shown)
    file.write_text(exp.model_dump_json())
    argv = ["run", str(file), "--no-tracking"] if command == "run" else ["demo"]
    for hide in (False, True):
        args = build_parser().parse_args(
            [*argv, "--output-dir", str(tmp_path / "out"), *(["--no-progress"] * hide)]
        )
        with pytest.raises(_Stop):
            args.handler(args)
        runs = [run for cell in expand_grid(seen.pop()) for run in (cell.finetune, cell.pretrain)]
        assert {run.train.progress for run in runs if run is not None} == {not hide}
