"""The Python client of the mixlab REST API (httpx), under mixlab's stable name.

    from mixlab.client import MixlabClient
    with MixlabClient("http://127.0.0.1:8000") as mx:  # api_key= (default $MIXLAB_API_KEY)
        ds = mx.wait_for_dataset(mx.create_builtin_dataset("digits")["id"])
"""

from mixlab import _internals

_internals.check()

from app.client import MixlabClient, MixlabError  # noqa: E402

__all__ = ["MixlabClient", "MixlabError"]
