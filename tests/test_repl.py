"""The REPL: command parsing, the session's state and seeds, and the real program driven in a
pseudo-terminal (pexpect) and through a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from chargen.checkpoint import load_model
from chargen.cli.repl import LATE_STOP_SECONDS, _terminal_lines, open_history
from chargen.cli.repl_terminal import Display, shade
from chargen.config import SampleConfig
from chargen.generation.sampler import Sampler
from chargen.paths import user_data_dir
from chargen.repl.commands import Command, CommandError, parse_line
from chargen.repl.session import Session
from tests.helpers import chargen_command

# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text"), [("ROMEO:", "ROMEO:"), ("", ""), ("  two spaces", "  two spaces"), ("//etc", "/etc")]
)
def test_a_line_that_is_not_a_command_is_a_prompt(line: str, text: str) -> None:
    assert parse_line(line) == Command("generate", text)


@pytest.mark.parametrize(
    ("line", "changes"),
    [
        ("/temp 0.5", {"temperature": 0.5}),
        ("/temperature 0", {"temperature": 0.0}),
        ("/topk 10", {"top_k": 10}),
        ("/topp 0.9", {"top_p": 0.9}),
        ("/len 800", {"length": 800}),
        ("/seed 3", {"seed": 3}),
        ("/stop \\n\\n", {"stop": ("\n\n",)}),
        ("/stop \\r\\n", {"stop": ("\r\n",)}),
        ("/stop . ", {"stop": (". ",)}),
        ("/stop off", {"stop": ()}),
    ],
)
def test_setting_commands_parse_their_values(line: str, changes: dict) -> None:
    assert parse_line(line) == Command("set", changes)


def test_a_setting_command_without_a_value_shows_the_setting() -> None:
    assert parse_line("/temp") == Command("show", "temperature")


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("/greedy", "greedy", None),
        ("/greedy off", "greedy", False),
        ("/colour on", "color", True),
        ("/exit", "quit", None),
    ],
)
def test_switches_and_aliases(line: str, name: str, value: object) -> None:
    assert parse_line(line) == Command(name, value)


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("/temp -1", "temperature must be a number >= 0"),
        ("/temp warm", "temperature must be a number >= 0, like /temp 0.7"),
        ("/temp nan", "temperature must be a number >= 0"),
        ("/topp 0", "top-p must be in (0, 1]"),
        ("/topp 1.5", "top-p must be in (0, 1]"),
        ("/topk -1", "top-k must be >= 0"),
        ("/topk 2.5", "top_k must be a whole number >= 0, like /topk 40"),
        ("/len 0", "length must be positive"),
        ("/seed x", "seed must be a whole number"),
        ("/greedy maybe", "/greedy takes on or off"),
        ("/save", "/save needs a file name"),
        ("/reset now", "/reset takes no value"),
        ("/tmp 3", "unknown command /tmp: did you mean /temp?"),
        ("/zzz", "unknown command /zzz: /help lists the commands"),
    ],
)
def test_a_bad_command_or_value_is_a_one_line_hint(line: str, hint: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_line(line)
    assert hint in str(caught.value)
    assert "\n" not in str(caught.value)


# --- the session, in process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler(tiny_checkpoint: Path) -> Sampler:
    loaded = load_model(tiny_checkpoint)
    return Sampler(loaded.model, loaded.tokenizer)


def run_turns(session: Session, lines: list[str]) -> list[str]:
    """Each prompt line's continuation; command lines are applied."""
    out = []
    for line in lines:
        command = parse_line(line)
        if command.name == "generate":
            out.append("".join(text for text, _ in session.generate(command.value)))
        else:
            session.apply(command)
    return out


def test_an_empty_line_continues_where_the_model_stopped(sampler: Sampler) -> None:
    greedy = SampleConfig(length=30, temperature=0)
    first, more = run_turns(Session(sampler, greedy), ["Whan", ""])
    at_once = Session(sampler, SampleConfig(length=60, temperature=0)).generate("Whan")
    assert first + more == "".join(text for text, _ in at_once)


def test_reset_forgets_the_text_so_far(sampler: Sampler) -> None:
    first, _, again = run_turns(
        Session(sampler, SampleConfig(length=30, temperature=0)), ["Whan", "", "/reset", "Whan"]
    )
    assert again == first


def test_the_same_seed_and_inputs_give_the_same_session(sampler: Sampler) -> None:
    lines = ["Whan", "", "/temp 1.2", "The"]
    a = run_turns(Session(sampler, SampleConfig(length=40, seed=3)), lines)
    b = run_turns(Session(sampler, SampleConfig(length=40, seed=3)), lines)
    c = run_turns(Session(sampler, SampleConfig(length=40, seed=4)), lines)
    assert a == b
    assert a != c


def test_each_turn_draws_new_random_numbers(sampler: Sampler) -> None:
    first, again = run_turns(Session(sampler, SampleConfig(length=40, seed=3)), ["Whan", "/reset", "Whan"])
    assert again != first


def test_the_seed_command_restarts_the_turn_count(sampler: Sampler) -> None:
    turns = run_turns(Session(sampler, SampleConfig(length=40)), ["/seed 5", "Whan", "/reset", "/seed 5", "Whan"])
    assert turns[0] == turns[1]


def test_without_a_seed_the_session_picks_one_and_shows_it(sampler: Sampler) -> None:
    session = Session(sampler, SampleConfig())
    assert session.config.seed is not None
    assert f"seed {session.config.seed} (turn 0)" in session.apply(Command("info"))


def test_characters_outside_the_vocabulary_are_read_without_a_crash(sampler: Sampler) -> None:
    session = Session(sampler, SampleConfig(length=20, seed=1))
    assert session.unknown_characters("Thé ✓") == "é✓"
    (text,) = run_turns(session, ["Thé ✓"])
    assert len(text) == 20


def test_a_stop_string_ends_the_turn_before_it(sampler: Sampler) -> None:
    (text,) = run_turns(Session(sampler, SampleConfig(length=300, seed=1)), ["/stop e", "Whan"])
    assert "e" not in text
    assert len(text) < 300


def test_greedy_off_restores_the_temperature(sampler: Sampler) -> None:
    session = Session(sampler, SampleConfig(temperature=0.6))
    assert session.apply(Command("greedy", None)) == "temperature 0 (greedy)"
    assert session.apply(Command("greedy", False)) == "temperature 0.6"


def test_probabilities_come_with_the_text(sampler: Sampler) -> None:
    steps = list(Session(sampler, SampleConfig(length=30, seed=1)).generate("Whan"))
    assert all(0 < prob <= 1 for _, prob in steps)


def test_save_writes_the_typed_and_generated_text(sampler: Sampler, tmp_path: Path) -> None:
    session = Session(sampler, SampleConfig(length=30, seed=1))
    (text,) = run_turns(session, ["Whan"])
    message = session.apply(parse_line(f"/save {tmp_path / 'out.txt'}"))
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "Whan" + text
    assert message.startswith("saved 34 characters")


def test_after_a_reset_the_saved_text_starts_a_new_paragraph(sampler: Sampler, tmp_path: Path) -> None:
    session = Session(sampler, SampleConfig(length=30, seed=1, stop=("\n",)))
    run_turns(session, ["Whan", "/reset", "The"])
    assert "\n\nThe" in session.text


def test_save_to_a_path_that_cannot_be_written_is_a_hint(sampler: Sampler, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CommandError, match="cannot write"):
        Session(sampler, SampleConfig()).apply(parse_line(f"/save {tmp_path / 'file' / 'out.txt'}"))


def test_shades_run_from_red_for_guesses_to_green_for_certainty() -> None:
    unsure, sure = shade(0.01).color.get_truecolor(), shade(0.99).color.get_truecolor()
    assert unsure.red > unsure.green
    assert sure.green > sure.red


def test_history_lives_in_chargen_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGEN_HOME", str(tmp_path / "home"))
    assert user_data_dir() == tmp_path / "home"
    _, warning = open_history(user_data_dir() / "repl_history")
    assert warning is None
    assert (tmp_path / "home" / "repl_history").exists()


def test_an_unwritable_history_file_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    history, warning = open_history(tmp_path / "file" / "repl_history")
    assert warning is not None
    assert warning.startswith("warning: cannot write the history file")
    history.append_string("still works")


# --- the real program in a pseudo-terminal -------------------------------------------------------

# prompt_toolkit enables bracketed paste as each prompt starts, then draws "> ".
READY = r"\x1b\[\?2004h.*?>"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|[\x08\r]")


def plain(screen_text: str) -> str:
    return ANSI.sub("", screen_text)


class Pty:
    def __init__(self, checkpoint: Path, *options: str, no_color: bool = False) -> None:
        env = {**os.environ, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
        env.pop("NO_COLOR", None)
        if no_color:
            env["NO_COLOR"] = "1"
        command = [*chargen_command(), "repl", str(checkpoint), *options]
        self.child = pexpect.spawn(command[0], command[1:], env=env, encoding="utf-8", timeout=60, dimensions=(40, 120))
        self.child.expect(READY)
        self.banner = plain(self.child.before)

    def line(self, text: str) -> str:
        """Send a line, wait for the next prompt, return what appeared in between (escapes kept)."""
        self.child.sendline(text)
        self.child.expect(READY)
        return self.child.before

    def quit(self) -> int:
        self.child.sendline("/quit")
        return self.exit_code()

    def exit_code(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def repl(tiny_checkpoint: Path) -> Iterator[Callable[..., Pty]]:
    started: list[Pty] = []

    def start(*options: str, no_color: bool = False) -> Pty:
        started.append(Pty(tiny_checkpoint, *options, no_color=no_color))
        return started[-1]

    yield start
    for pty in started:
        pty.child.close(force=True)


def test_the_banner_names_the_model(repl: Callable[..., Pty]) -> None:
    pty = repl()
    assert "chargen · tiny.pt · 1×32 LSTM · char vocab" in pty.banner
    assert "/help for commands" in pty.banner
    assert pty.quit() == 0


def test_a_prompt_is_echoed_and_continued(repl: Callable[..., Pty]) -> None:
    pty = repl("--length", "40", "--seed", "1")
    shown = pty.line("Whan")
    assert "\x1b[1mWhan\x1b[0m" in shown  # the prime, in bold
    assert plain(shown.split("\x1b[1mWhan\x1b[0m")[-1]).strip()
    assert "the model has read 44 characters" in plain(pty.line("/info"))
    assert pty.quit() == 0


def test_temp_changes_the_setting(repl: Callable[..., Pty]) -> None:
    pty = repl()
    assert "temperature 0.5" in plain(pty.line("/temp 0.5"))
    assert "temperature 0.5 · top-k off" in plain(pty.line("/info"))
    assert pty.quit() == 0


def test_an_empty_line_continues_the_text(repl: Callable[..., Pty]) -> None:
    pty = repl("--length", "40")
    pty.line("Whan")
    more = plain(pty.line(""))
    assert len(more.strip()) >= 20
    assert "the model has read 84 characters" in plain(pty.line("/info"))
    assert pty.quit() == 0


def test_ctrl_c_stops_a_generation_and_the_session_goes_on(repl: Callable[..., Pty]) -> None:
    pty = repl("--length", "10000000")
    pty.child.sendline("Whan")
    pty.child.expect(r"\x1b\[1mWhan\x1b\[0m[^\x1b]{50}")  # the prime in bold, then text as it is generated
    pty.child.sendcontrol("c")
    pty.child.expect("stopped")
    pty.child.expect(READY)
    assert "temperature 0.3" in plain(pty.line("/temp 0.3"))
    assert pty.quit() == 0


def test_bad_commands_do_not_end_the_session(repl: Callable[..., Pty]) -> None:
    pty = repl()
    assert "unknown command /bogus" in plain(pty.line("/bogus"))
    assert "temperature must be a number" in plain(pty.line("/temp hot"))
    assert "/save needs a file name" in plain(pty.line("/save"))
    assert "temperature 0.4" in plain(pty.line("/temp 0.4"))
    assert pty.quit() == 0


@pytest.mark.parametrize("key", ["c", "d"])
def test_ctrl_c_or_ctrl_d_at_an_empty_prompt_exits_cleanly(repl: Callable[..., Pty], key: str) -> None:
    pty = repl()
    time.sleep(LATE_STOP_SECONDS + 0.3)
    pty.child.sendcontrol(key)
    assert pty.exit_code() == 0


def test_a_ctrl_c_just_after_the_prompt_appeared_does_not_end_the_session() -> None:
    """The real prompt and key bindings, fed keys through a pipe, on a clock the test sets (a
    pseudo-terminal on a busy machine may deliver the key later than the window): a Ctrl-C 0.1 s
    after the prompt appeared was meant for the generation that had just ended; one 0.6 s after
    it leaves."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    # The prompt appears, Ctrl-C at +0.1 s; the next prompt appears, Ctrl-C at +0.6 s.
    clock = iter([100.0, 100.1, 200.0, 200.0 + LATE_STOP_SECONDS + 0.1]).__next__
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        lines = _terminal_lines(Display(interactive=False), clock)
        keys.send_text("\x03/temp 0.3\r")
        assert next(lines) == "/temp 0.3"
        keys.send_text("\x03")
        assert next(lines, None) is None


def test_ctrl_c_clears_a_typed_line(repl: Callable[..., Pty]) -> None:
    pty = repl()
    pty.child.send("/temp 0.9")
    pty.child.sendcontrol("c")
    assert "top-k 7" in plain(pty.line("/topk 7"))
    assert pty.quit() == 0


def test_history_persists_and_the_up_arrow_recalls_it(repl: Callable[..., Pty]) -> None:
    first = repl()
    first.line("/topk 12")
    assert first.quit() == 0
    assert "+/topk 12" in (user_data_dir() / "repl_history").read_text(encoding="utf-8")
    second = repl()
    for _ in range(50):  # the history loads in the background: press up until the line comes back
        second.child.send("\x1b[A")
        # the line as drawn over "/quit", the newest entry (prompt_toolkit may skip the space)
        if second.child.expect([r"topk(?:\x1b\[C| )12", pexpect.TIMEOUT], timeout=0.5) == 0:
            break
    assert "top-k 12" in plain(second.line(""))
    assert second.quit() == 0


def test_an_unwritable_history_file_is_a_warning_and_the_session_goes_on(
    repl: Callable[..., Pty], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("CHARGEN_HOME", str(tmp_path / "not-a-folder"))
    pty = repl()
    assert "warning: cannot write the history file" in pty.banner
    assert "temperature 0.4" in plain(pty.line("/temp 0.4"))
    assert pty.quit() == 0


def test_color_shades_the_generated_characters(repl: Callable[..., Pty]) -> None:
    pty = repl("--length", "20")
    assert "\x1b[38;" not in pty.line("Whan")
    assert "the model guessed" in plain(pty.line("/color"))
    assert "\x1b[38;" in pty.line("")
    assert pty.quit() == 0


# --- the real program reading a pipe -------------------------------------------------------------


def run_piped(checkpoint: Path, stdin: bytes, *options: str) -> subprocess.CompletedProcess[bytes]:
    command = [*chargen_command(), "repl", str(checkpoint), *options]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=120, check=False)


def test_piped_lines_print_each_continuation_without_escape_codes(tiny_checkpoint: Path, sampler: Sampler) -> None:
    lines = ["Whan", "/temp 0.5", "", "/bogus", "/quit", "never read"]
    result = run_piped(tiny_checkpoint, "\n".join(lines).encode() + b"\n", "--length", "30", "--seed", "7")
    assert result.returncode == 0
    expected = run_turns(Session(sampler, SampleConfig(length=30, seed=7)), lines[:3])
    assert result.stdout.decode() == "".join(t if t.endswith("\n") else t + "\n" for t in expected)
    assert b"temperature 0.5" in result.stderr
    assert b"unknown command /bogus" in result.stderr
    assert b"\x1b" not in result.stdout + result.stderr


def test_piped_input_ending_exits_0_and_bad_bytes_do_not_crash(tiny_checkpoint: Path) -> None:
    result = run_piped(tiny_checkpoint, b"Wh\xffan\xe9", "--length", "10", "--seed", "1")
    assert result.returncode == 0
    assert len(result.stdout.decode().removesuffix("\n")) in (9, 10)


def test_a_bad_option_is_one_error_line(tiny_checkpoint: Path) -> None:
    result = run_piped(tiny_checkpoint, b"", "--temperature", "-1")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "Error: --temperature must be a number >= 0, got -1.0"


def test_no_color_keeps_the_shading_off_and_says_so(repl: Callable[..., Pty]) -> None:
    pty = repl("--seed", "1", no_color=True)
    assert "NO_COLOR is set" in plain(pty.line("/color"))
    assert "\x1b[38;" not in pty.line("Whan")
