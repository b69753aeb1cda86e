"""`smartbench new-pruner NAME`: write a complete, working pruner file to edit in place.

The file (from bench/templates/pruner.py.tmpl) registers the pruner under NAME, declares its
patterns and a validated Config, and passes the conformance kit as generated. The kit needs no
entry of its own: it parametrises over every registered pruner (tests/conformance/), so a new
file in baselines/ is picked up by `make test` (or `pytest tests/conformance -k NAME`).
See docs/adding-a-pruner.md.
"""

from __future__ import annotations

import inspect
import keyword
import string
from pathlib import Path

from bench.core.errors import ConfigError

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "pruner.py.tmpl"


def default_directory() -> Path:
    import baselines

    return Path(baselines.__path__[0])


def class_stem(name: str) -> str:
    """``my_method`` -> ``MyMethod`` (prefix of the generated class names)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def render(name: str) -> str:
    return string.Template(TEMPLATE.read_text()).substitute(name=name, class_name=class_stem(name))


def check_name(name: str, target: Path, force: bool) -> None:
    """ConfigError unless NAME is a new pruner name and the target may be written."""
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name) or name.startswith("_"):
        raise ConfigError(
            "name",
            f"{name!r} is not allowed; use a Python identifier such as 'my_method' "
            "(ASCII, no leading underscore, not a keyword)",
        )
    from bench.runs.registry import load_pruners

    pruners = load_pruners()
    existing = pruners.get(name)
    if existing is not None and not (force and _source_of(existing) == target.resolve()):
        raise ConfigError(
            "name", f"a pruner named '{name}' already exists ({existing.__module__}); choose another name"
        )
    others = sorted(other for other, cls in pruners.items() if other != name and _source_of(cls) == target.resolve())
    if others:
        raise ConfigError("name", f"{target} also defines the pruner(s) {', '.join(others)}; it cannot be overwritten")
    if target.exists() and not force:
        raise ConfigError("name", f"{target} already exists; pass --force to overwrite it")


def _source_of(cls) -> Path | None:
    try:
        return Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        return None


def new_pruner(name: str, directory: Path | str | None = None, force: bool = False) -> Path:
    """Write DIRECTORY/NAME.py (default directory: the baselines package); returns its path."""
    directory = Path(directory) if directory is not None else default_directory()
    target = directory / f"{name}.py"
    check_name(name, target, force)
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(render(name))
    return target


def cmd_new_pruner(args) -> int:
    target = new_pruner(args.name, args.dir, args.force)
    print(f"wrote {target}: pruner '{args.name}' (patterns: unstructured, block, channel, nm)")
    if target.parent.resolve() != default_directory().resolve():
        print(
            "note: this folder is not baselines/; register the class through the 'smartbench.pruners' "
            "entry point of your package (docs/adding-a-pruner.md)"
        )
    print(f"next: edit its hooks, then `make test` (or `pytest tests/conformance -k {args.name}`)")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("new-pruner", help="scaffold a pruner file that passes the conformance kit")
    parser.add_argument("name", help="registry name and module name (a Python identifier)")
    parser.add_argument("--dir", default=None, help="folder to write NAME.py into (default: the baselines package)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.set_defaults(func=cmd_new_pruner)
