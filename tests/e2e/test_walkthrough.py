"""The README's walk-through pasted into a shell, in order, against `make run`'s stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gaggle_servers import free_port
from tests.e2e.test_stack import SERVICE_NAMES, Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MARK = "@@walkthrough@@"


def walkthrough_commands() -> list[tuple[str, list[str]]]:
    """Each command of the walk-through's shell blocks, with the output lines shown below it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two-minute walk-through", 1)[1].split("\n## ", 1)[0]
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.startswith("# "):
                commands[-1][1].append(line[2:])
            elif line.strip():
                commands.append((line, []))
    return commands


def as_pasted_here(command: str, ports: dict[str, int]) -> str:
    """``command`` for this test's stack: its ports, and this checkout's programs."""
    return (
        command.replace(":8080", f":{ports['gateway']}")
        .replace(":8081", f":{ports['registry']}")
        .replace("./gaggle ", f"{ROOT}/gaggle ")
        .replace(".venv/bin/", f"{ROOT}/.venv/bin/")
    )


def shown(expected: str, output: str) -> bool:
    """Whether ``output`` has the README's line ``expected``, up to spacing and its ellipses."""
    # A date shown is the day the README was written: any day will do.
    expected = re.sub(r"\b\d{4}-…", "…", expected)
    parts = [p for p in re.split(r"…|\.\.\.", expected) if p.strip()]
    words = [" ".join(p.split()) for p in parts]
    flat = " ".join(output.split())
    at = 0
    for word in words:
        found = flat.find(word, at)
        if found < 0:
            return False
        at = found + len(word)
    return True


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder outside pytest's private temporary root (the stack's PostgreSQL may be another
    user's)."""
    folder = Path(tempfile.mkdtemp(prefix="gwalk-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_walkthrough_works_as_written(home: Path) -> None:
    commands = walkthrough_commands()
    assert any(c.startswith("./gaggle rollouts watch") for c, _ in commands), commands
    ports = {k: free_port() for k in ("nats", *SERVICE_NAMES)}
    # The checkout's folder as the user has it: the stack's data in ./.gaggle.
    stack = Stack(home / ".gaggle", ports)
    stack.start()
    script = ["set -u"]
    for index, (command, _) in enumerate(commands):
        script.append(as_pasted_here(command, ports))
        script.append(f"printf '\\n{MARK} {index} %s\\n' $?")
        if command.rstrip().endswith("&"):
            # A person pastes the next line a moment later, once the simulated devices have
            # polled and reported their board: at most a minute on a busy machine.
            model = re.search(r"--hw-model (\S+)", command)
            assert model, command
            board = model.group(1)
            listed = f"{ROOT}/gaggle devices list --hw-model {board}"
            script.append(
                f"for _ in $(seq 60); do {listed} 2>/dev/null | grep -q ' {board} '"
                f" && break; sleep 1; done; sleep 2; printf '\\n{MARK} wait 0\\n'"
            )
    env = {k: v for k, v in stack.env.items() if not k.startswith("GAGGLE_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no uv, no .venv/bin
    try:
        run = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        code = stack.interrupt()
    assert code == 0, stack.log.read_text()[-3000:]
    outputs: dict[int, tuple[int, str]] = {}
    pieces = re.split(rf"\n{MARK} (\w+) (\d+)\n", "\n" + run.stdout)
    for start in range(1, len(pieces) - 1, 3):
        label, status, text = pieces[start], int(pieces[start + 1]), pieces[start - 1]
        if label != "wait":
            outputs[int(label)] = (status, text)
    report = run.stdout[-4000:] + run.stderr[-3000:]
    assert sorted(outputs) == list(range(len(commands))), report
    for index, (command, expected) in enumerate(commands):
        status, text = outputs[index]
        assert status == 0, f"{command} exited {status}:\n{report}"
        if command.startswith(("curl", "./gaggle rollouts watch")):
            # curl's JSON is checked in test_stack; the watch redraws only on a terminal.
            continue
        for line in expected:
            assert shown(line, text), f"{command}: no {line!r} in:\n{text}"
    watch = next(i for i, (c, _) in enumerate(commands) if c.startswith("./gaggle rollouts watch"))
    assert "finished" in outputs[watch][1].lower(), outputs[watch][1]
    show = next(i for i, (c, _) in enumerate(commands) if c.startswith("./gaggle devices show"))
    assert "1.2.0" in outputs[show][1], outputs[show][1]
