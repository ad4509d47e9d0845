"""Deterministic generation of the sandbox's owners and repositories.

Everything here is a pure function of ``(orgs, users, seed)``: the same arguments give the same
owners, names, descriptions, ids and timestamps on every run, so notebooks, tests and benchmarks
can rely on the data.  Descriptions are assembled from per-theme vocabularies with synonyms
("card payment settlement", "invoice reconciliation", "money movement ledger") so that a query
phrased in other words can still find the right theme, and each repository remembers the
theme(s) it was built from for retrieval tests (``Sandbox.themes_of``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# Generated timestamps end here (or one day before the sandbox starts, if the clock is earlier),
# so that only mutations made through the sandbox carry recent timestamps and the data does not
# drift from day to day.
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
GITHUB_EPOCH = datetime(2008, 1, 1, tzinfo=UTC)
VALID_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?")
MAX_AGE_DAYS = 12 * 365


@dataclass(frozen=True)
class Theme:
    """Vocabulary for one subject area: name stems, noun phrases, verb phrases, topics, languages."""

    key: str
    stems: tuple[str, ...]
    phrases: tuple[str, ...]
    actions: tuple[str, ...]
    topics: tuple[str, ...]
    languages: tuple[str, ...]


THEMES: dict[str, Theme] = {t.key: t for t in (
    Theme(
        "payments",
        ("payments", "billing", "ledger", "invoicing", "checkout", "settlement", "payouts", "refunds",
         "pricing", "wallet", "treasury", "dunning"),
        ("card payment settlement", "invoice reconciliation", "money movement ledger",
         "subscription billing", "payout scheduling", "chargeback handling", "double-entry bookkeeping",
         "merchant onboarding", "refund processing", "multi-currency conversion", "usage-based metering",
         "tax calculation", "payment gateway integration", "dunning and failed-charge recovery"),
        ("reconciles invoices against bank statements", "settles card transactions with acquirers",
         "moves money between customer wallets", "charges customers on a recurring schedule",
         "computes sales tax and VAT for every order", "tracks balances in an append-only ledger",
         "retries declined charges and notifies finance", "exports accounting journals to the ERP"),
        ("payments", "billing", "fintech", "ledger", "stripe", "invoicing", "accounting"),
        ("Go", "Java", "Kotlin", "Python", "Ruby", "TypeScript"),
    ),
    Theme(
        "identity",
        ("auth", "identity", "sso", "login", "oauth", "accounts", "iam", "sessions", "passkeys", "mfa"),
        ("single sign-on", "OAuth2 authorization server", "OpenID Connect login", "user identity management",
         "session token issuance", "role-based access control", "multi-factor authentication",
         "SAML federation", "password reset flows", "passkey and WebAuthn enrollment",
         "SCIM user provisioning", "API key management"),
        ("signs users in with OAuth2 and OIDC", "issues and rotates short-lived access tokens",
         "checks permissions before every request", "provisions accounts from the corporate directory",
         "verifies one-time passwords and hardware keys", "federates logins with SAML providers"),
        ("authentication", "oauth2", "oidc", "sso", "identity", "rbac", "jwt", "security"),
        ("Go", "Java", "TypeScript", "Python", "C#", "Rust"),
    ),
    Theme(
        "ml",
        ("ml", "models", "training", "inference", "features", "recsys", "embeddings", "classifier",
         "forecast", "vision", "nlp", "llm"),
        ("machine learning model training", "feature store", "model serving", "recommendation engine",
         "demand forecasting", "image classification", "text embeddings", "fraud scoring model",
         "hyperparameter tuning", "neural network experiments", "large language model fine-tuning",
         "churn prediction", "anomaly detection model"),
        ("trains gradient-boosted models on historical data", "serves predictions behind a low-latency API",
         "tracks experiments, metrics and model versions", "computes features for online inference",
         "fine-tunes transformer models on domain text", "ranks items with collaborative filtering",
         "labels images with a convolutional network"),
        ("machine-learning", "deep-learning", "pytorch", "mlops", "tensorflow", "data-science", "ai",
         "llm"),
        ("Python", "Python", "Jupyter Notebook", "Python", "Scala", "C++"),
    ),
    Theme(
        "data",
        ("etl", "pipelines", "warehouse", "ingest", "dbt", "lakehouse", "airflow", "batch", "cdc",
         "connectors", "datasets", "analytics"),
        ("data pipeline orchestration", "ETL jobs", "change data capture", "data warehouse models",
         "batch ingestion", "lakehouse tables", "data quality checks", "analytics engineering",
         "extract-transform-load workflows", "streaming ingestion", "dimensional modelling",
         "reverse ETL sync"),
        ("loads raw events into the warehouse every hour", "schedules extract, transform and load jobs",
         "captures row changes from the production database", "validates schemas and row counts",
         "builds dbt models for the analytics team", "backfills partitions after outages"),
        ("etl", "data-engineering", "airflow", "dbt", "spark", "data-pipeline", "analytics", "kafka"),
        ("Python", "Scala", "SQL", "Java", "Python", "Go"),
    ),
    Theme(
        "observability",
        ("monitoring", "metrics", "tracing", "logging", "alerts", "telemetry", "dashboards", "oncall",
         "slo", "probes", "exporter"),
        ("metrics collection", "distributed tracing", "log aggregation", "alerting rules",
         "service level objectives", "uptime monitoring", "OpenTelemetry instrumentation",
         "on-call paging", "error tracking", "performance dashboards", "synthetic probes"),
        ("scrapes Prometheus metrics from every service", "pages the on-call engineer when SLOs burn",
         "ships structured logs to the central store", "traces requests across microservices",
         "exports health checks and latency histograms", "draws Grafana dashboards from code"),
        ("monitoring", "observability", "prometheus", "grafana", "opentelemetry", "logging", "alerting",
         "tracing"),
        ("Go", "Go", "Python", "TypeScript", "Rust", "Jsonnet"),
    ),
    Theme(
        "infra",
        ("infra", "terraform", "k8s", "cluster", "helm", "platform", "deploy", "provisioning", "cloud",
         "networking", "ops", "gitops"),
        ("Kubernetes cluster configuration", "infrastructure as code", "Terraform modules", "Helm charts",
         "cloud provisioning", "container orchestration", "GitOps deployment", "autoscaling policies",
         "service mesh setup", "virtual network layout", "disaster recovery runbooks"),
        ("provisions cloud accounts with Terraform", "deploys workloads to Kubernetes with Argo CD",
         "packages services as Helm charts", "rotates node pools without downtime",
         "manages DNS, load balancers and certificates", "scales clusters based on queue depth"),
        ("kubernetes", "terraform", "helm", "infrastructure-as-code", "devops", "aws", "gcp", "gitops"),
        ("HCL", "Go", "Shell", "Python", "HCL", "Smarty"),
    ),
    Theme(
        "frontend",
        ("web", "ui", "frontend", "design-system", "dashboard", "portal", "components", "storefront",
         "console", "widgets", "admin"),
        ("React component library", "design system", "single-page web application",
         "customer-facing dashboard", "accessible UI widgets", "server-side rendered storefront",
         "admin console", "CSS theming", "Storybook stories", "micro-frontend shell"),
        ("renders the customer dashboard with React", "ships reusable buttons, forms and tables",
         "builds the marketing site with Next.js", "themes every screen from design tokens",
         "checks accessibility of each component"),
        ("react", "typescript", "frontend", "design-system", "nextjs", "css", "vue", "storybook"),
        ("TypeScript", "TypeScript", "JavaScript", "Vue", "CSS", "Svelte"),
    ),
    Theme(
        "mobile",
        ("ios", "android", "mobile", "app", "flutter", "react-native", "push", "wearables", "tablet"),
        ("iOS app", "Android app", "cross-platform mobile client", "push notification delivery",
         "offline-first sync", "mobile SDK", "in-app purchases", "Flutter widgets", "smartwatch companion",
         "deep linking"),
        ("runs on iPhone and iPad with SwiftUI", "ships the Android client built with Jetpack Compose",
         "syncs data when the phone comes back online", "sends push notifications to devices",
         "shares one codebase between iOS and Android"),
        ("ios", "android", "mobile", "swift", "kotlin", "flutter", "react-native"),
        ("Swift", "Kotlin", "Dart", "Objective-C", "Java", "TypeScript"),
    ),
    Theme(
        "docs",
        ("docs", "handbook", "wiki", "guides", "runbooks", "rfcs", "blog", "website", "playbook",
         "knowledge-base"),
        ("engineering handbook", "developer documentation", "architecture decision records",
         "API reference docs", "onboarding guide", "operational runbooks", "technical blog",
         "style guide", "tutorials and how-tos", "product changelog"),
        ("explains how to set up a development machine", "collects design proposals and RFCs",
         "publishes the API reference with MkDocs", "documents incident response procedures",
         "hosts the engineering blog"),
        ("documentation", "docs", "mkdocs", "handbook", "markdown", "docusaurus"),
        ("HTML", "MDX", "Python", "JavaScript", "Ruby", "CSS"),
    ),
    Theme(
        "security",
        ("security", "secrets", "vault", "scanner", "audit", "firewall", "vuln", "sast", "compliance",
         "pentest", "sbom"),
        ("vulnerability scanning", "secrets management", "static analysis", "dependency auditing",
         "intrusion detection", "compliance evidence collection", "software bill of materials",
         "penetration testing tools", "encryption key rotation", "web application firewall rules",
         "threat modelling"),
        ("scans container images for known CVEs", "stores secrets encrypted at rest",
         "flags vulnerable dependencies in pull requests", "collects audit evidence for SOC 2",
         "detects leaked credentials in commits", "rotates encryption keys automatically"),
        ("security", "vulnerability", "secrets", "devsecops", "compliance", "cve", "sast"),
        ("Go", "Python", "Rust", "C", "Java", "Shell"),
    ),
    Theme(
        "search",
        ("search", "indexer", "query", "ranking", "catalog", "autocomplete", "lucene", "vector-search",
         "crawler", "retrieval"),
        ("full-text search", "search indexing", "relevance ranking", "autocomplete suggestions",
         "semantic vector search", "product catalog search", "web crawler", "faceted navigation",
         "query understanding", "document retrieval"),
        ("indexes documents into Elasticsearch", "ranks results with BM25 and learned signals",
         "suggests completions as the user types", "finds similar items with vector embeddings",
         "crawls pages and extracts text"),
        ("search", "elasticsearch", "opensearch", "information-retrieval", "vector-search", "lucene"),
        ("Java", "Go", "Python", "Rust", "Scala", "TypeScript"),
    ),
    Theme(
        "messaging",
        ("queue", "events", "bus", "broker", "kafka", "notifications", "pubsub", "streams", "mailer",
         "webhooks", "sms"),
        ("message queue consumers", "event streaming", "publish-subscribe bus", "webhook delivery",
         "email and SMS notifications", "dead-letter handling", "Kafka topics", "RabbitMQ workers",
         "outbox pattern relay", "job scheduling"),
        ("consumes events from Kafka and fans them out", "delivers webhooks with retries and backoff",
         "sends transactional email and SMS", "moves poison messages to a dead-letter queue",
         "relays outbox rows to the event bus"),
        ("kafka", "rabbitmq", "messaging", "event-driven", "pubsub", "queue", "notifications"),
        ("Java", "Go", "Kotlin", "Python", "Elixir", "TypeScript"),
    ),
    Theme(
        "gamedev",
        ("game", "engine", "shaders", "multiplayer", "levels", "physics", "sprites", "arcade", "voxel",
         "modding"),
        ("game engine", "multiplayer netcode", "shader collection", "level editor", "physics simulation",
         "2D platformer", "procedural world generation", "matchmaking server", "sprite animation",
         "game jam prototype"),
        ("renders voxel worlds on the GPU", "synchronises player state over UDP",
         "generates dungeons procedurally", "simulates rigid bodies at 60 frames per second",
         "matches players of similar skill"),
        ("gamedev", "game-engine", "unity", "godot", "opengl", "multiplayer", "shaders"),
        ("C#", "C++", "GDScript", "Rust", "Lua", "ShaderLab"),
    ),
    Theme(
        "science",
        ("sim", "numerics", "genomics", "climate", "solver", "astro", "chem", "stats", "bio",
         "hpc"),
        ("numerical simulation", "finite element solver", "genome sequence analysis", "climate model",
         "statistical computing", "molecular dynamics", "astronomical image processing",
         "high-performance computing", "linear algebra kernels", "bioinformatics workflow"),
        ("solves partial differential equations on large meshes", "aligns DNA reads to a reference genome",
         "runs climate projections on the cluster", "fits Bayesian models to experimental data",
         "reduces telescope images"),
        ("scientific-computing", "numpy", "hpc", "bioinformatics", "simulation", "julia", "statistics"),
        ("Python", "Julia", "Fortran", "C++", "R", "Jupyter Notebook"),
    ),
    Theme(
        "devtools",
        ("ci", "build", "lint", "cli", "tooling", "release", "bazel", "actions", "devenv", "codegen",
         "bots"),
        ("continuous integration pipelines", "build system", "code linters", "release automation",
         "developer command-line tools", "code generation", "reusable GitHub Actions",
         "local development environment", "monorepo tooling", "pre-commit hooks"),
        ("runs tests and lints on every pull request", "cuts releases and writes changelogs",
         "generates API clients from OpenAPI specs", "caches build artefacts across machines",
         "bootstraps a developer laptop in one command"),
        ("ci", "github-actions", "developer-tools", "cli", "build-tool", "linter", "automation"),
        ("Go", "Python", "TypeScript", "Rust", "Shell", "Starlark"),
    ),
    Theme(
        "database",
        ("db", "postgres", "migrations", "storage", "cache", "redis", "orm", "sharding", "backup",
         "replication"),
        ("database migrations", "PostgreSQL extensions", "caching layer", "object storage",
         "ORM models", "sharding and replication", "backup and restore", "key-value store",
         "connection pooling", "time-series storage"),
        ("applies schema migrations safely in production", "caches hot keys in Redis",
         "shards tables across database nodes", "backs up databases to object storage every night",
         "pools connections in front of PostgreSQL"),
        ("database", "postgresql", "redis", "sql", "storage", "orm", "migrations"),
        ("Go", "Rust", "C", "Java", "Python", "PLpgSQL"),
    ),
    Theme(
        "geo",
        ("maps", "geo", "routing", "tiles", "gis", "geocoder", "tracking", "fleet", "places"),
        ("map tile rendering", "geospatial analysis", "route planning", "address geocoding",
         "fleet tracking", "location services", "points of interest catalogue", "GPS trace matching"),
        ("renders vector map tiles", "plans delivery routes for the fleet",
         "turns addresses into coordinates", "matches GPS traces to the road network"),
        ("gis", "maps", "geospatial", "routing", "openstreetmap", "postgis"),
        ("Python", "JavaScript", "C++", "Java", "Go", "TypeScript"),
    ),
    Theme(
        "api",
        ("api", "gateway", "graphql", "grpc", "backend", "bff", "rest", "proxy", "edge", "ratelimit"),
        ("API gateway", "GraphQL server", "gRPC services", "backend-for-frontend", "REST endpoints",
         "reverse proxy", "rate limiting middleware", "OpenAPI contracts", "edge routing"),
        ("routes external traffic to internal services", "exposes a GraphQL schema over the domain",
         "throttles clients that exceed their quota", "validates requests against OpenAPI contracts"),
        ("api", "graphql", "grpc", "rest-api", "openapi", "microservices", "proxy"),
        ("Go", "TypeScript", "Java", "Kotlin", "Rust", "Python"),
    ),
)}

KINDS = ("service", "library", "toolkit", "command-line tool", "API", "SDK", "worker", "dashboard",
         "pipeline", "prototype", "plugin", "framework", "microservice", "bot", "template")
AUDIENCES = ("for internal teams", "for the platform group", "used by the mobile apps",
             "for our customers", "shared across services", "for the data team", "in production since 2019",
             "maintained by the core team", "for the partner integrations", "")
SUFFIXES = ("service", "api", "core", "worker", "sdk", "cli", "web", "app", "engine", "gateway", "lib",
            "tools", "infra", "jobs", "adapter", "client", "server", "proxy", "operator", "bot", "utils",
            "kit", "ui", "config")
CODENAMES = ("atlas", "falcon", "nimbus", "orion", "pixel", "quartz", "raven", "sparrow", "titan",
             "vega", "zephyr", "ember", "harbor", "lumen", "maple", "nova", "onyx", "pulse", "river", "summit")
UNICODE_FLOURISHES = (" 🚀", " ✨", " (café edition)", " — naïve first version", " for the Zürich office",
                      " \u2013 señal de producción", " 支付与结算", " 日本語ドキュメント付き", " 🔒", " für das Team")
FORK_NOTES = ("Fork of the upstream project with our patches", "Our fork with internal fixes",
              "Patched fork tracking upstream")
HOMEPAGE_HOSTS = ("example.com", "example.org", "example.net")

LICENSES: dict[str, tuple[str, str, str | None, int]] = {
    # key: (name, spdx_id, url slug or None, node id number as on api.github.com/licenses)
    "mit": ("MIT License", "MIT", "mit", 13),
    "apache-2.0": ("Apache License 2.0", "Apache-2.0", "apache-2.0", 2),
    "gpl-3.0": ("GNU General Public License v3.0", "GPL-3.0", "gpl-3.0", 9),
    "bsd-3-clause": ('BSD 3-Clause "New" or "Revised" License', "BSD-3-Clause", "bsd-3-clause", 5),
    "bsd-2-clause": ('BSD 2-Clause "Simplified" License', "BSD-2-Clause", "bsd-2-clause", 4),
    "mpl-2.0": ("Mozilla Public License 2.0", "MPL-2.0", "mpl-2.0", 14),
    "lgpl-3.0": ("GNU Lesser General Public License v3.0", "LGPL-3.0", "lgpl-3.0", 12),
    "agpl-3.0": ("GNU Affero General Public License v3.0", "AGPL-3.0", "agpl-3.0", 1),
    "unlicense": ("The Unlicense", "Unlicense", "unlicense", 15),
    "other": ("Other", "NOASSERTION", None, 0),
}
LICENSE_WEIGHTS = (("mit", 35), ("apache-2.0", 20), ("gpl-3.0", 5), ("bsd-3-clause", 4), ("other", 3),
                   ("mpl-2.0", 2), ("bsd-2-clause", 1), ("lgpl-3.0", 1), ("agpl-3.0", 1),
                   ("unlicense", 1), (None, 27))
OTHER_LANGUAGES = ("Shell", "Makefile", "Dockerfile", "Python", "Go", "JavaScript", "Ruby", "PHP")


@dataclass
class Owner:
    """An organization or user account.  ``kind`` is GitHub's ``type`` value."""

    login: str
    id: int
    kind: str
    name: str
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    blog: str = ""
    location: str | None = None
    company: str | None = None


@dataclass
class Repo:
    """The mutable state of one repository; JSON shapes are derived from it in ``shapes``."""

    id: int
    owner: str
    name: str
    description: str | None
    language: str | None
    topics: list[str]
    visibility: str
    archived: bool
    fork: bool
    license: str | None
    homepage: str | None
    created_at: datetime
    updated_at: datetime
    pushed_at: datetime | None
    stargazers_count: int
    forks_count: int
    open_issues_count: int
    subscribers_count: int
    size: int
    default_branch: str
    has_issues: bool = True
    has_projects: bool = True
    has_wiki: bool = True
    has_pages: bool = False
    has_discussions: bool = False
    is_template: bool = False
    themes: list[str] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def private(self) -> bool:
        return self.visibility != "public"


def anchor_for(now: datetime) -> datetime:
    """The newest instant generated data may carry: fixed, but never within a day of ``now``."""
    latest = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    return min(ANCHOR, latest)


def generate(orgs: dict[str, int], users: dict[str, int], seed: int,
             now: datetime | None = None) -> tuple[list[Owner], list[Repo]]:
    """Build owners and their repositories.

    Each owner gets its own random stream (seeded by ``seed`` and the login), so adding an
    organization does not reshuffle the others.
    """
    anchor = anchor_for(now or datetime.now(UTC))
    owners: list[Owner] = []
    repos: list[Repo] = []
    used_owner_ids: set[int] = set()
    used_repo_ids: set[int] = set()
    seen: set[str] = set()
    for kind, counts in (("Organization", orgs), ("User", users)):
        for login, count in counts.items():
            if not VALID_LOGIN.fullmatch(login) or login.lower() in seen:
                raise ValueError(f"invalid or repeated account name {login!r}")
            seen.add(login.lower())
            rng = random.Random(f"{seed}:{kind}:{login}")
            owned = [_make_repo(rng, login, kind, anchor, i) for i in range(count)]
            _dedupe_names(owned)
            for repo in owned:
                repo.id = _unique(repo.id, used_repo_ids)
            owners.append(_make_owner(rng, login, kind, owned, anchor, used_owner_ids))
            repos.extend(owned)
    return owners, repos


def new_repo_id(existing: set[int], now: datetime) -> int:
    """Id for a repository created now: larger than every id so far, as on GitHub."""
    return max(max(existing, default=0) + 1, _id_for(now))


def owner_for_login(login: str, kind: str, seed: int, used_ids: set[int], now: datetime) -> Owner:
    """An owner with no generated repositories (e.g. the token's user or a transfer target)."""
    rng = random.Random(f"{seed}:{kind}:{login}")
    return _make_owner(rng, login, kind, [], anchor_for(now), used_ids)


def _unique(value: int, used: set[int]) -> int:
    while value in used:
        value += 1
    used.add(value)
    return value


def _id_for(moment: datetime) -> int:
    """Real repository ids grow with creation time (about 1.6 per second since 2008)."""
    return 10_000_000 + int((moment - GITHUB_EPOCH).total_seconds() * 1.6)


def _make_owner(rng: random.Random, login: str, kind: str, owned: list[Repo], anchor: datetime,
                used_ids: set[int]) -> Owner:
    first_repo = min((r.created_at for r in owned), default=anchor - timedelta(days=400))
    created = first_repo - timedelta(days=rng.randint(1, 300), seconds=rng.randint(0, 86_399))
    updated = anchor - timedelta(days=rng.randint(1, 200), seconds=rng.randint(0, 86_399))
    owner_id = _unique(rng.randint(1_000_000, 190_000_000), used_ids)
    pretty = login.replace("-", " ").replace("_", " ").title()
    if kind == "Organization":
        return Owner(login, owner_id, kind, pretty, created, max(updated, created),
                     description=f"{pretty} engineering", blog=f"https://{login}.example.com",
                     location=rng.choice(("Berlin", "San Francisco", "Toronto", "Singapore", "Remote")))
    return Owner(login, owner_id, kind, pretty, created, max(updated, created),
                 location=rng.choice((None, "Lisbon", "Seattle", "Osaka", "Nairobi")),
                 company=rng.choice((None, "@acme", "Freelance")))


def _make_repo(rng: random.Random, owner: str, kind: str, anchor: datetime, index: int) -> Repo:
    themes = [rng.choice(list(THEMES))]
    if rng.random() < 0.2:
        second = rng.choice(list(THEMES))
        if second != themes[0]:
            themes.append(second)
    primary = THEMES[themes[0]]
    is_user = kind == "User"
    fork = rng.random() < (0.3 if is_user else 0.14)
    archived = rng.random() < 0.1
    empty = rng.random() < 0.02
    created = anchor - timedelta(seconds=int((rng.random() ** 1.4) * MAX_AGE_DAYS * 86_400) + 86_400)
    pushed, updated = _activity(rng, created, anchor, archived, empty)
    visibility = _visibility(rng, is_user)
    stars = 0 if visibility != "public" and rng.random() < 0.7 else int(rng.paretovariate(1.1)) - 1
    stars = min(stars, 250_000)
    return Repo(
        id=_id_for(created) + rng.randint(0, 999),
        owner=owner,
        name=_name(rng, primary, index),
        description=_description(rng, themes, fork, archived),
        language=None if empty or rng.random() < 0.07 else _language(rng, primary),
        topics=_topics(rng, themes),
        visibility=visibility,
        archived=archived,
        fork=fork,
        license=None if visibility != "public" and rng.random() < 0.6 else _weighted(rng, LICENSE_WEIGHTS),
        homepage=_homepage(rng, owner),
        created_at=created,
        updated_at=updated,
        pushed_at=pushed,
        stargazers_count=stars,
        forks_count=int(stars * rng.random() * 0.3),
        open_issues_count=0 if archived else int(rng.random() ** 3 * 120),
        subscribers_count=1 + int(rng.random() ** 2 * 40),
        size=0 if empty else int(rng.lognormvariate(7, 2)),
        default_branch="main" if created.year >= 2021 or rng.random() < 0.3 else rng.choice(
            ("master", "master", "master", "develop", "trunk")),
        has_issues=rng.random() < 0.9,
        has_projects=rng.random() < 0.8,
        has_wiki=rng.random() < 0.6,
        has_pages=rng.random() < 0.05 or themes[0] == "docs",
        has_discussions=rng.random() < 0.08,
        is_template=rng.random() < 0.02,
        themes=themes,
    )


def _activity(rng: random.Random, created: datetime, anchor: datetime, archived: bool,
              empty: bool) -> tuple[datetime | None, datetime]:
    """pushed_at and updated_at; updated_at is never before created_at, as on GitHub."""
    if empty:
        return None, created + timedelta(seconds=rng.randint(1, 600))
    span = (anchor - created).total_seconds()
    if archived:
        span *= rng.random() * 0.5
    pushed = created + timedelta(seconds=int(span * (rng.random() ** 0.4)))
    if rng.random() < 0.05:
        updated = pushed - timedelta(seconds=int((pushed - created).total_seconds() * rng.random()))
    else:
        updated = min(anchor, pushed + timedelta(seconds=rng.randint(0, 20 * 86_400)))
    return pushed, max(updated, created)


def _visibility(rng: random.Random, is_user: bool) -> str:
    roll = rng.random()
    if is_user:
        return "private" if roll < 0.15 else "public"
    return "private" if roll < 0.2 else "internal" if roll < 0.3 else "public"


def _name(rng: random.Random, theme: Theme, index: int) -> str:
    stem = rng.choice(theme.stems)
    roll = rng.random()
    if roll < 0.45:
        name = f"{stem}-{rng.choice(SUFFIXES)}"
    elif roll < 0.6:
        name = stem
    elif roll < 0.75:
        name = f"{rng.choice(CODENAMES)}-{stem}"
    elif roll < 0.85:
        name = f"{stem}-{rng.choice(SUFFIXES)}-v{rng.randint(2, 4)}"
    elif roll < 0.93:
        name = f"{stem}_{rng.choice(SUFFIXES)}"
    else:
        name = "".join(part.capitalize() for part in f"{stem}-{rng.choice(SUFFIXES)}".split("-"))
    return name


def _dedupe_names(repos: list[Repo]) -> None:
    """Names are unique per owner, case-insensitively, like on GitHub."""
    seen: set[str] = set()
    for repo in repos:
        base, n = repo.name, 2
        while repo.name.lower() in seen:
            repo.name = f"{base}-{n}"
            n += 1
        seen.add(repo.name.lower())


def _description(rng: random.Random, themes: list[str], fork: bool, archived: bool) -> str | None:
    if rng.random() < 0.1:
        return None
    theme = THEMES[themes[0]]
    phrase = rng.choice(theme.phrases)
    kind = rng.choice(KINDS)
    pattern = rng.randrange(6)
    if len(themes) > 1:
        other = rng.choice(THEMES[themes[1]].phrases)
        text = f"{_cap(phrase)} {kind} with {other}"
    elif pattern == 0:
        text = f"{_cap(phrase)} {kind}"
    elif pattern == 1:
        text = f"{_cap(kind)} that {rng.choice(theme.actions)}"
    elif pattern == 2:
        text = f"{_cap(phrase)} {kind} that {rng.choice(theme.actions)}"
    elif pattern == 3:
        second = rng.choice(theme.phrases)
        text = f"{_cap(kind)} for {phrase} and {second}" if second != phrase else f"{_cap(phrase)} {kind}"
    elif pattern == 4:
        text = f"{_cap(phrase)}: {rng.choice(theme.actions)}"
    else:
        audience = rng.choice(AUDIENCES)
        text = f"{_cap(phrase)} {kind} {audience}".rstrip()
    if fork and rng.random() < 0.4:
        text = f"{rng.choice(FORK_NOTES)}: {text[0].lower()}{text[1:]}"
    if archived and rng.random() < 0.3:
        text += " (deprecated)"
    if rng.random() < 0.06:
        text += rng.choice(UNICODE_FLOURISHES)
    return text


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _language(rng: random.Random, theme: Theme) -> str:
    return rng.choice(theme.languages) if rng.random() < 0.93 else rng.choice(OTHER_LANGUAGES)


def _topics(rng: random.Random, themes: list[str]) -> list[str]:
    pool: list[str] = []
    for key in themes:
        pool.extend(t for t in THEMES[key].topics if t not in pool)
    count = min(len(pool), rng.choice((0, 0, 1, 2, 3, 3, 4, 5, 6)))
    return sorted(rng.sample(pool, count))


def _homepage(rng: random.Random, owner: str) -> str | None:
    roll = rng.random()
    if roll < 0.55:
        return None
    if roll < 0.8:
        return ""
    return f"https://{owner}.{rng.choice(HOMEPAGE_HOSTS)}/{rng.choice(CODENAMES)}"


def _weighted(rng: random.Random, options: tuple[tuple[str | None, int], ...]) -> str | None:
    total = sum(weight for _, weight in options)
    roll = rng.uniform(0, total)
    for value, weight in options:
        roll -= weight
        if roll <= 0:
            return value
    return options[-1][0]
