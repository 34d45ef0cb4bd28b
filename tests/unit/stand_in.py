"""A real agent's settings over a catalogue of stand-in models (``half_plus_two`` under each name, of a given size),
for unit tests that start a NodeAgent in-process: no discovery, one node ``n``, its data in ``tmp_path/n``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.settings import Settings, load_settings


def catalogue(folder: Path, sizes: dict[str, float]) -> Path:
    """``folder/catalogue.toml``: one model a name in ``sizes``, each the stand-in ``half_plus_two`` of that many MB
    and 1 core."""
    path = folder / "catalogue.toml"
    path.write_text(
        "".join(
            f'[[models]]\nname = "{m}"\nimage = "peerserve/modelserver:latest"\nstand_in = "half_plus_two"\n'
            f"mem_mb = {mb:.0f}\ncompute = 1\n"
            for m, mb in sizes.items()
        )
    )
    return path


def settings(tmp_path: Path, sizes: dict[str, float], token: str, **extra: Any) -> Settings:
    """Node ``n``'s settings (cluster ``token``, no discovery) over ``catalogue(tmp_path, sizes)``; ``extra``
    overrides any of them."""
    overrides = {"node_id": "n", "data_dir": str(tmp_path / "n"), "catalogue": str(catalogue(tmp_path, sizes)),
                 "discovery": False, "cluster_token": token, **extra}  # fmt: skip
    return load_settings(env={}, overrides=overrides)
