"""Hub ids (`org/name`): what can be fetched, said at once when nothing can.

`hub_class(id)` returns the model class a hub id names and the lookup options to load it
with. A model not in the local Hugging Face cache on a machine without network (or with
`HF_HUB_OFFLINE` set) is refused at once with the fix, instead of huggingface_hub's retries
with back-off; a cached model on such a machine loads from the cache only.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from interp.errors import ModelSourceError

__all__ = ["ModelSourceError", "hub_class", "hub_reachable"]

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds.

    **[ours]** Behind a proxy the probe cannot tell, so it answers True and leaves the verdict to
    huggingface_hub.
    """
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _refuse_local_looking(text: str) -> None:
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith("/"):
        raise ModelSourceError(f"{text!r} is neither an existing directory nor a hub id of the form org/name; "
                               "give the directory the model was saved in")
    folder = Path(text).expanduser().parent
    if folder.is_dir():
        raise ModelSourceError(
            f"there is no directory {text!r} (the folder {folder}/ exists here but holds no {Path(text).name}); "
            "give the directory the model was saved in, or, for the hub model of that name, run from a folder "
            f"without a {folder}/ subfolder")


def hub_class(text: str, trust_remote_code: bool = False) -> tuple[str, dict[str, Any]]:
    """(class name, lookup options) of the hub model `text` ("org/name").

    Raises:
        ModelSourceError: `text` is not of the form org/name, names a missing local path, or
            cannot be fetched (not cached, and offline or no network), or its config names no class.
    """
    _refuse_local_looking(text)
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    offline = bool(constants.HF_HUB_OFFLINE)
    online = not offline and hub_reachable(constants.ENDPOINT)
    if not cached and not online:
        why = "HF_HUB_OFFLINE is set" if offline else f"{urlparse(constants.ENDPOINT).hostname} cannot be reached"
        raise ModelSourceError(
            f"hub model {text!r} is not in the local Hugging Face cache and {why}, so it cannot be fetched (there "
            f"is no local directory {text!r} either). Download it on a machine with network (huggingface-cli "
            f"download {text} --local-dir DIR) and pass DIR, or check the id"
            + ("" if offline else "; set HF_HUB_OFFLINE=1 to use only what is cached, with no network at all"))
    hub = {} if online else {"local_files_only": True}
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code, **hub)
    except Exception as err:  # huggingface_hub and transformers raise many kinds here
        first = (str(err).splitlines() or [""])[0]
        raise ModelSourceError(
            f"could not fetch the config of hub model {text!r} ({type(err).__name__}: {first}); check the id "
            "(org/name), the network, or download it and pass the local directory (with no network, set "
            "HF_HUB_OFFLINE=1 to use the cache only)") from None
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ModelSourceError(f"hub model {text!r}: its config names no architectures; cannot tell which model "
                               "class to load")
    return names[0], hub
