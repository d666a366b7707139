"""`sparta reproduce` and `sparta tune-density` through `sparta.cli.main`."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from tinyrecipe import write_recipe  # noqa: E402

from sparta.cli import main  # noqa: E402
from tinylm import save_model_dir, toy_examples  # noqa: E402


def make_toy(root: Path) -> dict[str, Path]:
    files = {"model": save_model_dir(root / "model", chat=True, tied=True)}
    for split, n, seed in (("train", 32, 31), ("dev", 16, 32), ("test", 16, 33)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in toy_examples(n, seed)))
    return files


def test_reproduce_dry_run_run_and_report(tmp_path, capsys):
    toy = make_toy(tmp_path)
    recipe = write_recipe(tmp_path / "tiny.yaml", toy)
    out = tmp_path / "out"
    assert main(["reproduce", str(recipe), "--output", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for key in ("toy/sparta/seed0", "toy/sparta/seed1", "toy/head/seed0", "toy/head/seed1"):
        assert f"{key} [todo]" in printed
    assert "sparta train --task custom --method sparta" in printed and "estimated CPU time" in printed
    assert not out.exists()

    argv = ["reproduce", str(recipe), "--output", str(out), "--in-process", "--only", "head", "--seeds", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ran 1, skipped 0" in printed and "| Head (n=1) |" in printed
    assert (out / "report.md").is_file() and (out / "efficiency.png").is_file()

    md = tmp_path / "RESULTS.md"
    assert (
        main(["reproduce", str(recipe), "--output", str(out), "--report-only", "--results-md", str(md)]) == 0
    )
    text = md.read_text()
    assert "<!-- sparta:tiny:cpu start -->" in text and "CPU cores" in text and "| Head (n=1) |" in text
    capsys.readouterr()


def test_reproduce_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["reproduce", "nosuch"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "glue", "--only", "nosuch", "--dry-run"]) == 2
    assert "no row nosuch" in capsys.readouterr().err
    assert main(["reproduce", "list"]) == 0
    assert "density-sweep" in capsys.readouterr().out


def test_tune_density_cli(tmp_path, capsys):
    toy = make_toy(tmp_path)
    out = tmp_path / "tune"
    argv = [
        "tune-density",
        "--task",
        "custom",
        "--train-file",
        str(toy["train"]),
        "--dev-file",
        str(toy["dev"]),
        "--label-words",
        "No,Yes",
        "--model",
        str(toy["model"]),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.03",
        "--no-zero-shot",
        "--grid",
        "0.05,0.5",
        "--budget-runs",
        "2",
        "--large-samples",
        "none",
        "--small-samples",
        "24",
        "--output",
        str(out),
        "--in-process",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    assert result["recommended_density"] in (0.05, 0.5) and len(result["runs"]) == 2
    assert f"recommended density: {result['recommended_density']:g}" in printed
    assert main([*argv, "--budget-runs", "1"]) == 2
    assert "budget-runs" in capsys.readouterr().err
