"""What peftx echoes from user data never acts on the terminal: control characters are shown escaped,
a bare CR ends a line (it never splits one input into two misaligned rows), and a huge value is cut."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.runs.predict import Inputs, Predictions, read_inputs
from peftx.util.echo import MESSAGE_CHARS, printable, quoted, shorten
from peftx.util.text_files import decode_text, split_lines
from tests.support.tiny import tiny_recipe

runner = CliRunner()
CLEAR, TITLE = "\x1b[2J", "\x1b]0;owned\x07"


def test_printable_escapes_controls_and_keeps_text():
    assert printable(f"a{CLEAR}b{TITLE}c\rd\te\nf\x7f\x9b\u2028") == (
        "a\\x1b[2Jb\\x1b]0;owned\\x07c\\rd\\te\\nf\\x7f\\x9b\\u2028"
    )
    assert printable("[MAX 2 9 ] é ✓ C:\\data") == "[MAX 2 9 ] é ✓ C:\\data"


def test_shorten_caps_huge_values_without_copying_them_whole():
    line = "x" * 10_000_000
    shown = shorten(line, 120)
    assert len(shown) < 160 and "10,000,000 characters" in shown
    assert len(quoted(line)) < 170 and quoted([1, 2]) == "[1, 2]"
    assert shorten("\x1b" * 200, 60).count("\x1b") == 0


def test_lines_end_at_lf_crlf_and_a_bare_cr_only():
    assert split_lines("a\r\nb\rc\nd\x0ce\u2028f\x85g\n") == ["a", "b", "c", "d\x0ce\u2028f\x85g"]
    assert split_lines("") == [] and split_lines("a") == ["a"] and split_lines("a\n\n") == ["a", ""]
    with pytest.raises(PeftxError, match=r"x.txt:3: binary data"):
        decode_text(b"a\rb\r\n\0", "x.txt")  # line numbers count a bare CR as a line ending


def test_predict_inputs_split_at_cr_are_numbered_as_their_lines():
    inputs = read_inputs("[MAX 2 9 ]\r[MIN 4 7 ]\r\n\r[SM 1 2 ]\x0c\n", "in.txt")
    assert inputs.texts == ["[MAX 2 9 ]", "[MIN 4 7 ]", "[SM 1 2 ]\x0c"]
    assert inputs.where == ["in.txt:1", "in.txt:2", "in.txt:4"]
    tsv = read_inputs("Source\tTarget\r[MAX 2 9 ]\t9\r[MIN 4 7 ]\t4\r", "in.tsv")
    assert tsv.texts == ["[MAX 2 9 ]", "[MIN 4 7 ]"] and tsv.targets == ["9", "4"]
    assert tsv.where == ["in.tsv:2", "in.tsv:3"]


def test_prediction_rows_show_inputs_labels_and_targets_escaped():
    preds = Predictions(Inputs([f"a{CLEAR}", f"b{TITLE}"], ["t\r", "u"]), [f"l{CLEAR}", "m"])
    rows = preds.rows()
    assert rows[1] == ["a\\x1b[2J", "l\\x1b[2J", "t\\r"]
    assert rows[2] == ["b\\x1b]0;owned\\x07", "m", "u"]
    assert not any("\x1b" in cell or "\r" in cell for row in rows for cell in row)


def _write(tmp_path, raw, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_error_messages_escape_controls_and_are_capped(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"]["lr"] = f"{CLEAR}{TITLE}" + "y" * 10_000_000
    result = runner.invoke(app, ["validate", _write(tmp_path, raw)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "train.lr" in err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[2J" in err
    assert len(err) < MESSAGE_CHARS + 100

    raw = tiny_recipe("bert", tmp_path)
    raw["method"]["r"] = "4\r\nerror: forged"
    result = runner.invoke(app, ["validate", _write(tmp_path, raw)])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and "\\r\\n" in result.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("echo")
    raw = tiny_recipe("bert", tmp_path)
    raw["train"]["steps"] = 2
    result = runner.invoke(app, ["run", _write(tmp_path, raw), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "tiny_bert"


def test_predict_echoes_nothing_that_acts_on_the_terminal(run_dir, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_bytes(b"[MAX 2 9 ]\r[MIN 4 7 ]\r\n[MAX 1 3 ]\n")  # three lines, one ended by a bare CR
    pred = runner.invoke(app, ["predict", str(run_dir), str(inputs)])
    assert pred.exit_code == 0, pred.output
    lines = pred.stdout.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == ["input", "[MAX 2 9 ]", "[MIN 4 7 ]", "[MAX 1 3 ]"]

    bad = tmp_path / "bad.txt"
    bad.write_text(f"[MAX 2 9 ]\r[MAX 2 {CLEAR}{TITLE} ]\n", newline="")
    out = runner.invoke(app, ["predict", str(run_dir), str(bad)])
    assert out.exit_code == 2, out.output
    err = out.stderr.strip()
    assert "bad.txt:2:" in err and "\n" not in err and "\x1b" not in err and "\x07" not in err

    huge = tmp_path / "huge.txt"
    huge.write_text("[MAX 2 " + "9 " * 2_000_000 + "x ]\n")
    out = runner.invoke(app, ["predict", str(run_dir), str(huge)])
    assert out.exit_code == 2 and len(out.stderr.strip()) < MESSAGE_CHARS + 100, out.stderr[:500]
