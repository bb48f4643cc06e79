"""Reading the deployment files as Docker and Compose do, for tests that replay them without either:
the Dockerfile's stages and instructions, `.dockerignore`, and Compose's `${VAR...}` interpolation."""

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ENV, ...
    arguments: str  # the rest of the (joined) line

    def exec_form(self) -> list[str]:
        """`["python", "-m", "app"]` as a list (the JSON form only: that is what we write)."""
        value = json.loads(self.arguments)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages in order, each with its instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        else:
            assert stages, f"{instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    return stages


def expand(value: str, env: dict[str, str]) -> str:
    """Dockerfile `$VAR` / `${VAR}` substitution."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m[1] or m[2], ""), value)


def env_pairs(instruction: Instruction, env: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B="x y"` as {A: 1, B: x y}, each value expanded against `env` (the stage so far)."""
    pairs = {}
    for word in shlex.split(instruction.arguments):
        name, sep, value = word.partition("=")
        assert sep, f"only the ENV key=value form is read: {instruction}"
        pairs[name] = expand(value, env | pairs)
    return pairs


def run_flags(instruction: Instruction) -> list[str]:
    """A RUN's shell command as words, without its `--mount=...` (BuildKit cache) flags."""
    words = shlex.split(instruction.arguments)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def dockerignore(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """What `docker build` leaves out of the context for these patterns (no `!` exceptions: we use none)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not replayed"
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(suffix, pattern[3:]) for suffix in suffixes):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: `${V}`, `${V:-default}`, `${V-default}`, `${V:?error}`, `${V?error}`, `$$`."""

    def one(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        operator, argument = match[2], match[3] or ""
        present = name in variables and (variables[name] != "" or not (operator or "").startswith(":"))
        if present:
            return variables[name]
        if operator in (":-", "-"):
            return argument
        if operator in (":?", "?"):
            raise KeyError(f"compose requires {name}: {argument}")
        return ""

    return _VARIABLE.sub(one, value)
