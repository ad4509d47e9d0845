"""A faithful local GitHub REST API sandbox: generated organizations, real-looking responses, faults.

    from ghetl.sandbox import Sandbox
    with Sandbox(orgs={"acme": 500}, users={"octocat": 12}, seed=7) as sb:
        httpx.get(f"{sb.url}/orgs/acme/repos", params={"per_page": 100})
"""

from .cli import add_arguments, run
from .data import THEMES
from .records import RequestRecord
from .sandbox import Sandbox

__all__ = ["Sandbox", "RequestRecord", "THEMES", "add_arguments", "run"]
