"""The layout is the architecture (docs/architecture.md): imports flow one way, from cli and train
down to ot. Every ``import`` in the package is checked, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "otalign"

# package -> the otalign packages it may import
ALLOWED = {
    "ot": set(),  # pure tensor maths: knows nothing of speech, text or models
    "data": set(),
    "text": set(),
    "models": {"data", "text"},
    "align": {"ot", "data", "text", "models"},
    "decode": {"data", "text"},
    "train": {"ot", "data", "text", "models", "align", "decode"},
}
# commands that sit above System (otalign.train.system), beside the CLI
COMMANDS = {"otalign.decode.recipe": {"train"}}


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_imports_flow_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if len(parts) < 3:  # otalign/cli.py, otalign/__init__.py: the top may import anything
            continue
        module, package = ".".join(parts), parts[1]
        allowed = ALLOWED[package] | COMMANDS.get(module, set()) | {package}
        for name in imports(path):
            if name.startswith("otalign.") and name.split(".")[1] not in allowed:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_solver_imports_no_model_or_speech_code():
    for path in sorted((PACKAGE / "ot").rglob("*.py")):
        for name in imports(path):
            assert not name.startswith("torch.nn"), f"{path.name} imports {name}"
            assert not name.startswith("otalign.") or name.startswith("otalign.ot"), f"{path.name} imports {name}"


def test_every_package_is_placed_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), f"place {sorted(packages ^ set(ALLOWED))} in ALLOWED"
