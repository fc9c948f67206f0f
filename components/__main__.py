"""``python -m components``: compile every component to its ``component.yaml``."""

from pathlib import Path

from kfp import compiler

from components import COMPONENTS

HERE = Path(__file__).resolve().parent


def compile_all(folder: Path = HERE) -> list[Path]:
    written = []
    for name, comp in COMPONENTS.items():
        path = folder / name / "component.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(comp, str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in compile_all():
        print(path.relative_to(HERE.parent))
