import pytest

from tests.conftest import Access


@pytest.fixture(autouse=True, scope="session")
def _as_the_tests_project(access: Access) -> Access:
    """Every integration test runs with the ``tests`` project's write key exported
    (MIXLAB_API_KEY), so clients it makes, and processes it starts, send it."""
    return access
