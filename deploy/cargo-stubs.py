#!/usr/bin/env python3
"""Write an empty stand-in for every source file Cargo.toml names, so that the
image's dependency layer (`cargo build` on the manifest and lock file alone)
builds every dependency without the crate's sources.

Used by deploy/Containerfile; run from the crate root. Cargo refuses a manifest
whose [[bench]], [[test]] or [[example]] file is missing, so those get a stub
too, as do [[bin]] targets and the default src/lib.rs and src/main.rs. The real
sources are copied over the stubs afterwards (and touched, so cargo rebuilds
the crate). Never run this in a working tree: it overwrites files.
"""

import pathlib
import sys
import tomllib

DEFAULT_DIRS = {"bin": "src/bin", "bench": "benches", "test": "tests", "example": "examples"}
MAIN = "fn main() {}\n"


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    with open(root / "Cargo.toml", "rb") as f:
        manifest = tomllib.load(f)
    stubs = {manifest.get("lib", {}).get("path", "src/lib.rs"): "", "src/main.rs": MAIN}
    for kind, folder in DEFAULT_DIRS.items():
        for target in manifest.get(kind, []):
            stubs.setdefault(target.get("path") or f"{folder}/{target['name']}.rs", MAIN)
    for rel, text in sorted(stubs.items()):
        path = root / rel
        if path.exists():
            sys.exit(f"cargo-stubs: {path} exists; run this only on a manifest-only copy")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"cargo-stubs: {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
