"""Every fenced snippet of README.md, docs/*.md and deploy/README.md runs (issue 20, item 9).

One stack is started the way the README says — ``auditstream up`` in a project
folder, moved by ``AUDITSTREAM_PORT_OFFSET`` so it runs beside other tests and a
developer's ``make run`` — and every snippet runs against it, in document order:

- ``sh``/``bash``/``shell``: ``bash -e -o pipefail`` in the project folder, with
  ``.venv/bin`` first on PATH (``auditstream``, ``python``), the offset exported (the
  CLI then finds the stack through its state file, as the README says) and ``TOKEN``
  set as ``up``'s banner tells the reader to (``export TOKEN=…``). Standard input
  holds a password twice (for commands that prompt), and the folder holds the files
  the snippets read: ``secret.txt``, ``new.txt`` (stream secrets) and
  ``events.ndjson`` (three valid events).
- ``python``: a script run by the venv's Python in the project folder.
- ``json``: must parse. A documented response says which request gives it:
  ``<!-- snippet: response GET /v1/…?tenant=acme -->`` before the fence; the test
  sends that request with a ``*`` token and checks that every key the example shows
  is in the real answer (top level, and the first item of a list of objects). ``…``
  elides: ``"…"`` is any value, ``, …`` more keys or items.
- ``text``: an illustration or an output, not run.

Addresses with the documented default ports (``127.0.0.1:8080``,
``127.0.0.1:9192``, …) are moved by the offset before a snippet runs; nothing
else is rewritten. A snippet that cannot run here says so in the Markdown, in an
HTML comment right before its fence: ``<!-- snippet: skip REASON -->`` (not run)
or ``<!-- snippet: syntax REASON -->`` (only compiled: ``compile()`` for Python,
``bash -n`` for shell). Everything else runs, so a new snippet is run by default.
Run ``pytest -rP`` to see what each snippet printed. Snippets run in document
order and may build on earlier ones (the history examples of docs/viewer.md read the
invoice the README's SDK example emitted): run the module whole.

Commands quoted inline in the prose (`` `auditstream replay --no-archive` ``,
``python -m …``, ``bench/….py``, ``make …``) are checked without the stack: the
command, module, script or make target exists and knows every ``--option`` quoted.

This machine resolves no public host names, so the stack and the snippets run with
``AUDITSTREAM_STREAMS_ALLOW_PRIVATE_HOSTS=true`` (a webhook URL such as
``https://siem.example.com/hook`` is accepted without resolving; its deliveries
then fail and retry, which no snippet depends on).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditstream.drain import LagReader

# The snippets build on each other and share the module's stack, so they must run in
# order on one stack. `xdist_group` does not keep them together: with pytest 9 + xdist
# 3.8 the group suffix is not applied, and a parallel run spread this module over all four
# workers, each with its own stack, so later snippets missed what earlier ones emitted
# (docs/chain.md:167 exported nothing; docs/viewer.md:191's history request was the first
# request its worker's stack served). `serial`: make test-resilience runs the module
# alone, in one process, after the parallel pass.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("docs_snippets"),
    pytest.mark.serial,
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
DOCS.append("deploy/README.md")

SHELL = {"sh", "bash", "shell"}
RUNNABLE = SHELL | {"python", "json"}
NOT_CODE = {"text"}
# every port `up` uses, as the README lists them (moved by AUDITSTREAM_PORT_OFFSET)
DEFAULT_PORTS = (8080, 9108, 9109, 9110, 9192, 27117, 6479)
PASSWORD = "correct horse battery staple 7"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
ELIDED = re.compile(r",\s*…\s*(?=[}\]])")
DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>\w+)\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    path: str
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    directive: str | None  # None, "skip", "syntax" or "response"
    reason: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def parse(path: str, text: str) -> list[Snippet]:
    """The fenced blocks of one Markdown text, with the directive before each."""
    lines = text.split("\n")
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        directive, reason = None, ""
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        d = DIRECTIVE.match(lines[before]) if before >= 0 else None
        if d:
            directive, reason = d["kind"], d["reason"]
        lang = m["info"].strip().split()[0] if m["info"].strip() else ""
        out.append(Snippet(path, i + 1, lang, body + "\n", directive, reason))
        i = end + 1
    return out


def documented(body: str) -> Any:
    """A documented JSON example with its elisions (``, …``) taken out."""
    return json.loads(ELIDED.sub("", body))


def missing(doc: Any, real: Any) -> list[str]:
    """Keys a documented response shows that the real one lacks: at the top level,
    and in the first item of a list of objects (values are data: not compared)."""
    if not isinstance(doc, dict) or not isinstance(real, dict):
        return [] if isinstance(doc, type(real)) else [f"a {type(real).__name__}, not an object"]
    out = [key for key in doc if key not in real]
    for key, value in doc.items():
        got = real.get(key)
        if value and isinstance(value, list) and isinstance(value[0], dict) and got:
            out += [
                f"{key}[0].{k}" for k in value[0] if not isinstance(got, list) or k not in got[0]
            ]
    return out


def all_snippets() -> list[Snippet]:
    return [s for p in DOCS for s in parse(p, (ROOT / p).read_text(encoding="utf-8"))]


SNIPPETS = all_snippets()
CODE = [s for s in SNIPPETS if s.lang not in NOT_CODE]
MARKS = ("skip", "syntax", "response")
RUN = [s for s in CODE if s.lang in RUNNABLE and s.directive in (None, "response")]


# --------------------------------------------------------------------------- the marks


def test_the_parser_reads_fences_and_directives() -> None:
    text = (
        "intro\n\n<!-- snippet: skip needs docker -->\n```sh\ndocker ps\n```\n\n"
        "- item:\n\n   ```python\n   print(1)\n   ```\n"
    )
    first, second = parse("x.md", text)
    assert (first.lang, first.body, first.directive, first.reason) == (
        "sh",
        "docker ps\n",
        "skip",
        "needs docker",
    )
    assert (second.line, second.lang, second.body, second.directive) == (
        10,
        "python",
        "print(1)\n",
        None,
    )


def test_a_documented_response_is_compared_by_its_keys() -> None:
    doc = documented('{"data": [{"id": "…", "changes": {"a": 1}, …}], "next_cursor": null, …}')
    assert doc == {"data": [{"id": "…", "changes": {"a": 1}}], "next_cursor": None}
    real = {"data": [{"id": "e1", "changes": {}, "seq": 1}], "next_cursor": "c", "more": 1}
    assert missing(doc, real) == []
    assert missing(doc, {"data": [{"id": "e1"}]}) == ["next_cursor", "data[0].changes"]
    assert missing(doc, {"data": [], "next_cursor": None}) == []  # nothing to compare


def test_every_fence_says_what_it_is_and_every_mark_why() -> None:
    """A fence without a language, in a language nothing runs, or a mark without a
    reason fails here: new snippets run by default."""
    problems = []
    for s in SNIPPETS:
        if not s.lang:
            problems.append(f"{s.id}: no language (```text for illustrations and outputs)")
        elif s.lang not in RUNNABLE | NOT_CODE and s.directive is None:
            problems.append(f"{s.id}: nothing runs ```{s.lang}: mark it skip or syntax")
        if s.directive is not None and s.directive not in MARKS:
            problems.append(f"{s.id}: unknown mark {s.directive!r} ({', '.join(MARKS)})")
        if s.directive is not None and not s.reason:
            problems.append(f"{s.id}: a {s.directive} mark needs a reason")
        if s.directive == "syntax" and s.lang not in SHELL | {"python"}:
            problems.append(f"{s.id}: syntax checks exist for sh and python only")
        if s.directive == "response" and (s.lang != "json" or not s.reason.startswith("GET /")):
            problems.append(f"{s.id}: a response mark is 'GET /path' before a json fence")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet", [s for s in CODE if s.directive in ("skip", "syntax")], ids=lambda s: s.id
)
def test_marked_snippets_compile(snippet: Snippet) -> None:
    """Snippets that cannot run here are at least valid Python or shell."""
    if snippet.directive == "skip":
        pytest.skip(f"{snippet.id}: {snippet.reason}")
    if snippet.lang == "python":
        compile(snippet.body, snippet.id, "exec")
    else:
        check = subprocess.run(["bash", "-n"], input=snippet.body, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


# --------------------------------------------------------------------------- inline commands

INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")
PLACEHOLDER = re.compile(r"^(…|<.*>|[A-Z]+|\[.*)$")


def inline_commands(text: str) -> list[str]:
    """The inline code spans of a Markdown text (outside fences) that run something:
    ``auditstream …``, ``python -m …``, ``bench/….py …``, ``make …``."""
    prose = re.sub(r"^(\s*)(`{3,}|~{3,}).*?^\1\2\s*$", "", text, flags=re.S | re.M)
    spans = (re.sub(r"^([A-Z_]+=\S+ )+", "", " ".join(m.split())) for m in INLINE.findall(prose))
    runs = ("auditstream ", "python -m ", ".venv/bin/python ", "make ")
    return [s for s in spans if s.startswith(runs) or re.match(r"bench/\w+\.py\b", s)]


def _options(argv: list[str]) -> list[str]:
    return [a.strip("[]").split("=")[0] for a in argv if a.strip("[]").startswith("--")]


def command_problem(span: str) -> str | None:
    """Why an inline command names a command, module, script, option or make
    target that does not exist, or None."""
    import click

    from auditstream.cli import main

    argv = span.replace('"', " ").split()
    if argv[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        return None if re.search(rf"^{re.escape(argv[1])}:", makefile, re.M) else "no target"
    if argv[0] == "auditstream":
        cmd: click.Command = main
        for word in argv[1:]:
            if not isinstance(cmd, click.Group) or word.startswith("-"):
                break
            sub = cmd.commands.get(word)
            if sub is None:
                return None if PLACEHOLDER.match(word) else f"no command {word!r}"
            cmd = sub
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        unknown = [o for o in _options(argv) if o not in known]
        return f"no option {', '.join(unknown)}" if unknown else None
    if argv[0] == ".venv/bin/python":
        argv = ["python", *argv[1:]]
    if argv[0] == "python" and argv[1] == "-m":
        target = ["-m", argv[2]]
    else:
        script = argv[1] if argv[0] == "python" else argv[0]
        if not (ROOT / script).is_file():
            return f"no file {script}"
        target = [str(ROOT / script)]
    wanted = _options(argv)
    if not wanted and target[0] == "-m":
        return None if importlib.util.find_spec(target[1]) else f"no module {target[1]}"
    if not wanted:
        return None
    helped = subprocess.run(
        [sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if helped.returncode != 0:
        return f"--help exited {helped.returncode}: {helped.stderr.strip()[-300:]}"
    unknown = [o for o in wanted if o not in helped.stdout]
    return f"no option {', '.join(unknown)}" if unknown else None


def test_inline_commands_name_real_commands_and_options() -> None:
    """Commands quoted in the prose (`auditstream replay --no-archive`) exist: the
    command, its options, the module or script and its options, the make target."""
    problems = []
    for path in DOCS:
        for span in dict.fromkeys(inline_commands((ROOT / path).read_text(encoding="utf-8"))):
            why = command_problem(span)
            if why:
                problems.append(f"{path}: `{span}`: {why}")
    assert not problems, "\n".join(problems)


def test_inline_command_checks_catch_mistakes() -> None:
    text = "Run `A_B=1 auditstream replay --no-archive`,\n`auditstream frobnicate`, `` ` ``.\n"
    assert inline_commands(text) == ["auditstream replay --no-archive", "auditstream frobnicate"]
    assert command_problem("auditstream replay [--since TIME] [--no-archive]") is None
    assert command_problem("auditstream streams redrive <id>") is None
    assert command_problem("auditstream frobnicate") == "no command 'frobnicate'"
    assert command_problem("auditstream verify --tenants T") == "no option --tenants"
    assert command_problem("make run") is None and command_problem("make fly") == "no target"
    assert command_problem("bench/nothing.py --x 1") == "no file bench/nothing.py"
    assert command_problem("python -m producers.nothing") == "no module producers.nothing"
    assert command_problem("python -m producers.verify_offline --events E --colour") == (
        "no option --colour"
    )


# --------------------------------------------------------------------------- the stack


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _offset() -> int:
    """An offset below the ephemeral range at which every port of `up` is free."""
    for _ in range(200):
        offset = random.randrange(1000, 5600)
        if all(_free(p + offset) for p in DEFAULT_PORTS):
            return offset
    raise AssertionError("no free port offset")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}


@dataclass
class Stack:
    folder: Path
    offset: int
    token: str
    env: dict[str, str]
    reader: str = ""  # a `*` token (events:read) for documented responses

    def get(self, path: str) -> Any:
        req = urllib.request.Request(
            self.moved(f"http://127.0.0.1:8080{path}"),
            headers={"Authorization": f"Bearer {self.reader}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def moved(self, text: str) -> str:
        """``text`` with the documented default ports moved by the offset."""
        pattern = "|".join(str(p) for p in DEFAULT_PORTS)
        return re.sub(
            rf"\b(127\.0\.0\.1|localhost):({pattern})\b",
            lambda m: f"{m[1]}:{int(m[2]) + self.offset}",
            text,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``up`` like Ctrl-C; a SIGKILL after 90 s (its watchdog then stops the rest)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _start(folder: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    for _attempt in range(3):
        offset = _offset()
        out = folder / f"up-{offset}.out"
        env = _clean_env() | {
            "AUDITSTREAM_PORT_OFFSET": str(offset),
            "AUDITSTREAM_CHECKPOINT_EVERY_EVENTS": "1",  # every stored batch signed: exports verify
            "AUDITSTREAM_STREAMS_ALLOW_PRIVATE_HOSTS": "true",
        }
        with open(out, "wb") as log:
            proc = subprocess.Popen(
                [str(VENV_BIN / "auditstream"), "up"],
                env=env,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 180
            while b"auditstream is ready" not in out.read_bytes():
                if proc.poll() is not None:
                    break
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.5)
        except BaseException:  # not ready in time, or the test run's timeout
            _stop(proc)
            raise
        if proc.poll() is None:
            return proc, offset, out.read_text().split("export TOKEN=")[1].split()[0]
        if "is taken" not in out.read_text() and "in use" not in out.read_text():
            raise AssertionError(out.read_text())  # not a port race: a real failure
    raise AssertionError("up found a port taken three times")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("project")
    (folder / ".venv").symlink_to(VENV_BIN.parent)
    (folder / "secret.txt").write_text("whsec-docs-snippets-1\n")
    (folder / "new.txt").write_text("whsec-docs-snippets-2\n")
    (folder / "events.ndjson").write_text(
        "".join(
            json.dumps({"tenant": "acme", "action": "invoice.create", "actor": {"id": a}}) + "\n"
            for a in ("alice", "bob", "carol")
        )
    )
    proc, offset, token = _start(folder)
    env = _clean_env() | {
        "AUDITSTREAM_PORT_OFFSET": str(offset),
        "AUDITSTREAM_STREAMS_ALLOW_PRIVATE_HOSTS": "true",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "TOKEN": token,
        "PW": PASSWORD,
    }
    stack = Stack(folder, offset, token, env)
    try:
        reader = subprocess.run(
            ["auditstream", "token", "--tenant", "*", "--scopes", "events:read"],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        )
        stack.reader = reader.stdout.strip()
        yield stack
    finally:
        _stop(proc)


def _compare_response(stack: Stack, snippet: Snippet) -> None:
    """The documented keys are in the real answer (waits up to 30 s for events the
    earlier snippets emitted to be stored)."""
    doc = documented(snippet.body)
    path = snippet.reason.split(maxsplit=1)[1]
    lists = [k for k, v in doc.items() if isinstance(v, list) and v]
    deadline = time.monotonic() + 30
    while True:
        real = stack.get(path)
        lacking = missing(doc, real)
        empty = [k for k in lists if not real.get(k)]
        if (not lacking and not empty) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps(real, indent=1))
    assert not lacking, f"{snippet.id}: GET {path} has no {', '.join(lacking)}"
    assert not empty, f"{snippet.id}: GET {path} answered empty {', '.join(empty)}"


def _settle(stack: Stack, timeout: float = 60.0) -> None:
    """Wait until the stack's processor stored every event on the topic (its group's lag
    is 0): a snippet reads what the snippets before it emitted (on a busy machine the
    processor can be seconds behind)."""
    (state_path,) = stack.folder.glob(".auditstream*/stack.json")
    env = json.loads(state_path.read_text())["env"]

    async def lag() -> int:
        reader = LagReader(
            env["AUDITSTREAM_KAFKA_BOOTSTRAP"],
            env["AUDITSTREAM_PROCESSOR_GROUP"],
            env["AUDITSTREAM_TOPIC_EVENTS"],
        )
        async with reader:
            deadline = time.monotonic() + timeout
            while True:
                behind = await reader.lag()
                if not behind or time.monotonic() > deadline:
                    return behind
                await asyncio.sleep(0.2)

    behind = asyncio.run(lag())
    assert behind == 0, f"the processor is still {behind} events behind after {timeout:g}s"


def _run(stack: Stack, snippet: Snippet) -> subprocess.CompletedProcess[str]:
    _settle(stack)
    body = stack.moved(snippet.body)
    if snippet.lang == "python":
        script = stack.folder / f"snippet_{snippet.path.replace('/', '_')}_{snippet.line}.py"
        script.write_text(body)
        argv = [str(VENV_BIN / "python"), script.name]
        stdin = ""
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", body]
        stdin = f"{PASSWORD}\n{PASSWORD}\n"
    return subprocess.run(
        argv,
        input=stdin,
        env=stack.env,
        cwd=stack.folder,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal: prompts read stdin
    )


@pytest.mark.parametrize("snippet", RUN, ids=lambda s: s.id)
def test_snippet_runs(stack: Stack, snippet: Snippet) -> None:
    if snippet.directive == "response":
        _compare_response(stack, snippet)
        return
    if snippet.lang == "json":
        json.loads(snippet.body)
        return
    run = _run(stack, snippet)
    print(run.stdout, run.stderr, sep="\n")  # pytest -rP shows what each snippet printed
    assert run.returncode == 0, (
        f"{snippet.id} exited {run.returncode}\n--- snippet\n{stack.moved(snippet.body)}"
        f"--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}"
    )
