"""Read deploy/docker/Dockerfile* into stages (dockerfile-parse does the
lexing: continuation lines, comments) and the build context through
.dockerignore (the Docker SDK's own matcher)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from tests.deploy.promql import REPO

DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile*"))
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: RUN, COPY, ...
    value: str  # arguments, ARG defaults substituted


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def last(self, name: str) -> Instruction | None:
        found = self.all(name)
        return found[-1] if found else None


def substitute(value: str, args: dict[str, str]) -> str:
    """Expand ${NAME} / $NAME for known ARGs; leave anything else (e.g. $PATH)."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return args.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse(path: Path) -> list[Stage]:
    # fileobj, not path: DockerfileParser treats a path not named "Dockerfile"
    # as a directory holding one.
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        name, value = item["instruction"], item["value"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            words = substitute(value, global_args).split()
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(stage_name, words[0]))
            continue
        if name == "ARG":
            key, _, default = value.partition("=")
            target = stages[-1].args if stages else global_args
            target[key.strip()] = default.strip()
            if not stages:
                continue
        scope = {**global_args, **stages[-1].args}
        stages[-1].instructions.append(Instruction(name, substitute(value, scope)))
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


def exec_form(value: str) -> list[str]:
    """A JSON (exec form) argument list; anything else is an error here."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def healthcheck_command(instruction: Instruction) -> list[str]:
    _, _, command = instruction.value.partition("CMD")
    return exec_form(command.strip())


def env_pairs(value: str) -> dict[str, str]:
    """ENV in the KEY=VALUE form (values here need no quoting)."""
    pairs = {}
    for word in value.split():
        key, sep, val = word.partition("=")
        assert sep, f"ENV {value!r}: use KEY=VALUE"
        pairs[key] = val
    return pairs


def copy_args(value: str) -> tuple[dict[str, str], list[str], str]:
    """COPY [--flag=value ...] SRC... DEST -> (flags, sources, dest)."""
    words = value.split()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, val = words.pop(0)[2:].partition("=")
        flags[key] = val
    return flags, words[:-1], words[-1]


def build_context() -> set[str]:
    """Paths (relative, files and directories) that `docker build .` sends."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    return exclude_paths(str(REPO), patterns, dockerfile="deploy/docker/Dockerfile")
