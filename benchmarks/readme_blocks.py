"""The README's measured blocks: each lies between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
and is written only by the script it names, with the machine and the date that produced it."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def machine() -> str:
    """This machine in a few words: CPU model, logical CPUs, and the GPU when torch sees one."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def provenance(command: str, where: str | None = None) -> str:
    """The sentence that closes a block: what produced it, on what, and when."""
    return f"Produced by `{command}` on {where or machine()}, {datetime.date.today().isoformat()}."


def replace_block(name: str, body: str, readme: Path = README) -> Path:
    """Put ``body`` between the block's markers in ``readme``; without them, write ``benchmarks/NAME.md``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text() if readme.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{body.strip()}\n{end}{tail}")
        return readme
    fallback = Path(__file__).resolve().parent / f"{name}.md"
    fallback.write_text(body.strip() + "\n")
    return fallback
