"""The Hugging Face hub: what names a hub model (`is_hub_id`) and a local snapshot of one. Nothing
else in the kit talks to the hub; tests and the quick start never reach it (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import re
from pathlib import Path

from minimodel.common.errors import UserError, error_gist


def local_path_missing(spec) -> str | None:
    """Why an org/name-shaped spec is a local path that is not there, so asking the hub (which retries
    for half a minute offline) would only blame the hub: its parent directory exists here
    (runs/core_104m beside an existing runs/). None when it may well be a hub id."""
    parent = Path(str(spec)).parent
    return f"{parent}/ exists here, so it names a local path, not a hub id" if parent.is_dir() else None


def hub_snapshot(repo_id: str, revision: str | None = None, tokenizer_only: bool = False) -> Path:
    """A local snapshot of a hub model: config, safetensors weights and tokenizer files only (or, with
    tokenizer_only, the tokenizer's files and config.json: what data preparation needs)."""
    from huggingface_hub import snapshot_download  # the hub client: only on paths that may reach the hub
    from huggingface_hub.errors import (  # the hub client: only on paths that may reach the hub
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if why := local_path_missing(repo_id):
        raise UserError(f"model not found locally: {repo_id} ({why}); train or copy it there first, or name "
                        "an existing directory")
    files = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=files if tokenizer_only else [*files, "*.safetensors"]))
    except RepositoryNotFoundError:
        raise UserError(f"hub model {repo_id} does not exist (or is gated: log in with `hf auth login`)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"hub model {repo_id} is not in the local cache and the hub is offline "
                        "(HF_HUB_OFFLINE=1); download it once online or give a local directory") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot fetch hub model {repo_id}: {error_gist(e)}") from None


def is_hub_id(spec) -> bool:
    """`org/name` that is not a local path: what the hub is asked for."""
    text = str(spec)
    return (not Path(text).exists() and not text.startswith((".", "/", "~"))
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None)
