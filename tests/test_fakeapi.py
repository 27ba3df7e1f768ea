"""The fake model API's own checks (tests/fakeapi/selfcheck.py), collected by pytest."""

from tests.fakeapi.selfcheck import *  # noqa: F403
