"""`peftx export --push-to-hub`: an export uploaded to a Hugging Face hub repository."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from peftx.errors import PeftxError
from peftx.model.sources import hub_reachable


def check_hub(repo: str) -> None:
    """Fail fast, before exporting, where `--push-to-hub REPO` cannot succeed.

    Raises:
        PeftxError: a repository id that is not `owner/name`, or an unreachable hub (offline).
    """
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PeftxError(f"--push-to-hub: {repo!r} is not a repository id (owner/name)")
    if not hub_reachable():
        raise PeftxError(f"--push-to-hub: cannot reach the Hugging Face hub for {repo} (offline or HF_HUB_OFFLINE=1)")


def push_to_hub(out_dir: Path, repo: str, private: bool = False) -> str:
    """Upload an export to a hub repository (created if missing); returns the repository's URL.

    Raises:
        PeftxError: the hub is unreachable, or refuses (one line).
    """
    check_hub(repo)
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo, commit_message=f"peftx export of {out_dir.name}")
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise PeftxError(f"--push-to-hub: {repo}: {str(e).splitlines()[0]}") from None
    return str(url)
