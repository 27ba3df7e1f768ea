"""A fake model API for tests: Anthropic Messages + OpenAI Responses, scripted by prompt markers.

Usage::

    from tests.fakeapi import FakeModelAPI

    with FakeModelAPI() as api:
        env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key"}
        ...  # run `claude -p` with a prompt holding "[[fake:write_commit]]"
        assert api.main_requests[-1].behaviour == "write_commit"

See README.md in this folder for the markers and their behaviours.
"""

from .behaviours import BEHAVIOURS
from .server import FakeModelAPI, RequestRecord

__all__ = ["BEHAVIOURS", "FakeModelAPI", "RequestRecord"]
