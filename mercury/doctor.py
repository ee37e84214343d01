"""`mercury doctor`: each check an operator needs before `mercury run`, with a fix hint.

This module lists the checks and their order; each chat platform's live credential check
lives in its adapter package (`mercury/adapters/<platform>/check.py`), found through
`mercury.adapters.registry`.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable

from mercury.adapters.registry import secret_needs
from mercury.checks import CheckResult, Status
from mercury.config import SECRET_ENV, Config, ConfigError, LoadedConfig, Secrets
from mercury.core.roles import Role
from mercury.logging import first_line

__all__ = ["CheckResult", "Status", "run_checks"]

ENGINE_CHECK = "Docker engine reachable"


def _env(secret: str) -> str:
    return SECRET_ENV[secret]


def check_config(loaded: LoadedConfig | None, error: ConfigError | None) -> CheckResult:
    if error is not None:
        return CheckResult(
            "config valid",
            Status.FAIL,
            "; ".join(error.problems),
            "fix the keys named above (mercury.example.yaml lists every key and its default)",
        )
    assert loaded is not None
    where = str(loaded.path) if loaded.path else "no mercury.yaml found: built-in defaults"
    status = Status.OK if loaded.path else Status.WARN
    return CheckResult(
        "config valid", status, where, "" if loaded.path else "run `mercury init` to create one"
    )


def check_docker() -> tuple[CheckResult, object | None]:
    from mercury.sandbox.engine import ENGINE_HINT, EngineUnavailable, connect_engine

    try:
        client, info = connect_engine(timeout=5)
    except EngineUnavailable as exc:
        return CheckResult(ENGINE_CHECK, Status.FAIL, str(exc), ENGINE_HINT), None
    detail = f"Docker {info.version} (API {info.api_version}) at {info.endpoint}"
    return CheckResult(ENGINE_CHECK, Status.OK, detail), client


def check_image(config: Config, client: object | None) -> CheckResult:
    name = "agent image present"
    if client is None:
        return CheckResult(name, Status.SKIP, "needs the Docker engine", "fix the Docker check")
    from docker.errors import DockerException, ImageNotFound

    try:
        image = client.images.get(config.container.image)  # type: ignore[attr-defined]
    except ImageNotFound:
        return CheckResult(
            name,
            Status.FAIL,
            f"{config.container.image} not found on the engine",
            "build it: mercury image build",
        )
    except DockerException as exc:
        return CheckResult(name, Status.FAIL, str(exc).splitlines()[0], "check the Docker engine")
    return CheckResult(name, Status.OK, f"{config.container.image} ({image.short_id})")


def check_ext_image(config: Config, client: object | None) -> CheckResult:
    """Whether the derived image of the enabled extensions' installs is on the engine.

    Offline, only the tag of the current plan can be checked (a build in progress or a
    failure lives in the `mercury run` process and its log); runs work meanwhile.
    """
    from mercury.core.extension_spec import install_plan
    from mercury.extensions import load_enabled
    from mercury.sandbox.ext_image import ext_image_tag
    from mercury.sandbox.images import image_id

    name = "extension image"
    try:
        plan = install_plan(ext.spec for ext in load_enabled(config).values())
    except (ValueError, OSError) as exc:
        return CheckResult(
            name, Status.FAIL, first_line(exc), "check it: mercury ext validate PATH"
        )
    if not plan:
        return CheckResult(name, Status.OK, "no extension installs: none needed", required=False)
    if client is None:
        return CheckResult(name, Status.SKIP, "needs the Docker engine", required=False)
    try:
        base = image_id(client, config.container.image)  # type: ignore[arg-type]
        tag = ext_image_tag(base, plan) if base else None
        ready = tag is not None and image_id(client, tag) is not None  # type: ignore[arg-type]
    except Exception as exc:
        return CheckResult(name, Status.WARN, first_line(exc), required=False)
    if tag is None:
        return CheckResult(name, Status.SKIP, "needs the agent image", required=False)
    who = ", ".join(n for n, _ in plan)
    if ready:
        return CheckResult(name, Status.OK, f"{tag} ready ({who})", required=False)
    return CheckResult(
        name,
        Status.WARN,
        f"{tag} not built yet: runs use the plain agent image, without the installs of {who}",
        "`mercury run` builds it in the background (its log shows `ext image build` steps)",
        required=False,
    )


def check_warm(config: Config, client: object | None) -> CheckResult:
    """How many warm containers wait for a message now, and the memory they hold."""
    from mercury.sandbox.warm import waiting_on_engine

    name = "warm containers"
    warm = config.container.warm
    if not warm.enabled or warm.max == 0:
        return CheckResult(name, Status.OK, "off (container.warm.enabled)", required=False)
    if client is None:
        return CheckResult(name, Status.SKIP, "needs the Docker engine", required=False)
    try:
        count, used = waiting_on_engine(client, config)
    except Exception as exc:
        return CheckResult(name, Status.WARN, str(exc).splitlines()[0][:200], required=False)
    memory = f", {used / 1024**2:.0f} MiB in use" if count else ""
    return CheckResult(
        name,
        Status.OK,
        f"{count} waiting{memory} (at most {warm.max}, each removed after {warm.idle_ttl:g}s idle)",
        required=False,
    )


async def check_database(config: Config) -> CheckResult:
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, head_revision

    name = "database reachable and migrated"
    url = config.resolved_database_url()
    shown = safe_url(url)
    try:
        current = await asyncio.wait_for(current_revision(url), timeout=10)
    except Exception as exc:  # any driver error means "not reachable"
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown}: {first_line(exc)}",
            "check database_url and that the server is running",
        )
    head = head_revision()
    if current != head:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown}: schema at {current or 'empty'}, code expects {head}",
            "run `mercury db upgrade` (mercury run also migrates on start)",
        )
    return CheckResult(name, Status.OK, f"{shown} at revision {head}")


def check_data_dir(config: Config) -> CheckResult:
    path = config.data_dir
    name = "data dir writable"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return CheckResult(
            name, Status.FAIL, f"{path}: {exc.strerror}", "fix its permissions or set data_dir"
        )
    return CheckResult(name, Status.OK, str(path))


def check_host_side(config: Config) -> list[CheckResult]:
    """Who agents run as, whether the data dir is private, and the disk they may fill."""
    import stat

    from mercury.sandbox.identity import IdentityError, container_identity, host_owner_of
    from mercury.sandbox.spaces import free_bytes, image_support

    results: list[CheckResult] = []
    name = "container user"
    try:
        ident = container_identity(config.container)
    except IdentityError as exc:
        results.append(CheckResult(name, Status.FAIL, str(exc), "set container.user to auto"))
    else:
        owner = host_owner_of(ident)
        if owner:
            results.append(
                CheckResult(
                    name,
                    Status.WARN,
                    f"{ident.user}: {owner}, who could read and change every space",
                    "set container.user to an unused uid:gid (docs/security.md)",
                    required=False,
                )
            )
        else:
            results.append(CheckResult(name, Status.OK, f"{ident.user} (no host account)"))
    path = config.data_dir
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o700  # made private by mercury run
    if mode & 0o077:
        results.append(
            CheckResult(
                "data dir private",
                Status.WARN,
                f"{path} is {mode:04o}: other host users can look inside",
                "mercury run makes it 0700 at start; or chmod 700 it now",
                required=False,
            )
        )
    else:
        results.append(CheckResult("data dir private", Status.OK, f"{path} is {mode:04o}"))
    disk = config.disk
    try:
        free = free_bytes(path if path.exists() else path.parent)
    except OSError as exc:
        results.append(CheckResult("free disk", Status.FAIL, f"{path}: {exc.strerror}"))
        return results
    no_images = image_support()
    size = f"{(disk.space_size or 0) / 1024**3:g} GiB"
    if disk.space_size is None:
        limit = "spaces have no size limit (disk.space_size: null)"
    elif disk.space_limit == "image" and no_images:
        results.append(
            CheckResult("free disk", Status.FAIL, f"disk.space_limit is image, but {no_images}")
        )
        return results
    elif disk.space_limit == "watch" or no_images:
        limit = f"spaces are watched at {size}" + (
            f" (no images: {no_images})" if no_images else ""
        )
    else:
        limit = f"spaces are filesystem images of {size}"
    gib = free / 1024**3
    if free < disk.min_free:
        results.append(
            CheckResult(
                "free disk",
                Status.FAIL,
                f"{gib:.1f} GiB free, under disk.min_free: no run starts until there is more",
                "free disk space in data_dir's filesystem or lower disk.min_free",
            )
        )
    else:
        results.append(CheckResult("free disk", Status.OK, f"{gib:.1f} GiB free; {limit}"))
    return results


def check_adapters(config: Config, secrets: Secrets) -> list[CheckResult]:
    present = secrets.present()
    results: list[CheckResult] = []

    def need(adapter: str, names: list[str], setup_doc: str, extra: str = "") -> None:
        missing = [_env(n) for n in names if n not in present]
        label = f"{adapter} adapter has its token"
        if missing:
            results.append(
                CheckResult(
                    label,
                    Status.FAIL,
                    f"missing {', '.join(missing)}{extra}",
                    f"set it in the environment or .env ({setup_doc})",
                )
            )
        else:
            results.append(
                CheckResult(label, Status.OK, ", ".join(_env(n) for n in names) + " set")
            )

    login = " (dashboard and web chat login)"
    for platform in secret_needs(config):
        extra = f" (mode {platform.mode})" if platform.mode else ""
        if platform.platform == "web":
            extra = login
        need(platform.platform, list(platform.names), platform.setup_doc, extra)
    if config.dashboard.enabled and not config.adapters.web.enabled:
        need("web", ["dashboard_password"], "docs/web-chat.md", login)
    if not results:
        results.append(
            CheckResult("adapters", Status.WARN, "no adapter enabled", "enable one in mercury.yaml")
        )
    return results


async def check_platform_credentials(config: Config, secrets: Secrets) -> list[CheckResult]:
    """Each enabled platform's live credential check (its adapter package's
    `check_credentials`), concurrently, rows in registry order.

    An enabled adapter without its token gets a skip row (the token row already fails);
    with no platform adapter enabled nothing touches the network.
    """
    from mercury.adapters.registry import credential_checks

    checks = credential_checks(config)
    groups = await asyncio.gather(*(check(config, secrets) for _, check in checks))
    return [row for rows in groups for row in rows]


def check_model(config: Config, secrets: Secrets) -> CheckResult:
    present = secrets.present()
    usable, problems = [], []
    for i, leg in enumerate(config.model.chain):
        key = f"{leg.provider}_api_key"
        if key in present or leg.base_url:
            usable.append(f"{leg.provider}/{leg.model}")
        else:
            problems.append(f"model.chain[{i}] {leg.provider}: no {_env(key)} and no base_url")
    name = "model provider key or base URL"
    if not usable:
        return CheckResult(
            name,
            Status.FAIL,
            "; ".join(problems),
            "set ANTHROPIC_API_KEY / OPENAI_API_KEY in .env, or a base_url for a local server",
        )
    if problems:
        return CheckResult(name, Status.WARN, "; ".join(problems), "that leg will be skipped")
    return CheckResult(name, Status.OK, ", ".join(usable))


# What a process of each role does not do, so is not checked for (docs/scale-out.md).
NO_ENGINE = "not on a gateway: the workers run the containers"
NO_CHATS = "not on a worker: the gateway talks to the chats"


async def run_checks(
    load: Callable[[], LoadedConfig],
    role: Role = Role.ALL,
) -> list[CheckResult]:
    """Every check, in the order `mercury doctor` prints them. A gateway skips the
    Docker ones (it has no engine to find) and a worker the chat ones, saying why."""
    try:
        loaded: LoadedConfig | None = load()
        error = None
    except ConfigError as exc:
        loaded, error = None, exc
    results = [check_config(loaded, error)]
    engine = role.runs_containers
    if engine:
        from mercury.sandbox.engine import use_docker_host

        if loaded is not None:
            use_docker_host(loaded.config.container.docker_host)  # as `mercury run` does
        docker_result, client = await asyncio.to_thread(check_docker)
    else:
        docker_result, client = CheckResult(ENGINE_CHECK, Status.SKIP, NO_ENGINE), None
    results.append(docker_result)
    if loaded is None:
        skipped = [
            "agent image present",
            "extension image",
            "warm containers",
            "database reachable and migrated",
            "data dir writable",
            "container user",
            "data dir private",
            "free disk",
            "adapter tokens",
            "platform credentials",
            "model provider key or base URL",
        ]
        results += [CheckResult(n, Status.SKIP, "needs a valid config") for n in skipped]
        return results
    config = loaded.config
    if engine:
        results.append(await asyncio.to_thread(check_image, config, client))
        results.append(await asyncio.to_thread(check_ext_image, config, client))
        results.append(await asyncio.to_thread(check_warm, config, client))
    else:
        names = ("agent image present", "extension image", "warm containers")
        results += [CheckResult(n, Status.SKIP, NO_ENGINE) for n in names]
    results.append(check_data_dir(config))
    results += [
        r if engine or r.name != "container user" else CheckResult(r.name, Status.SKIP, NO_ENGINE)
        for r in check_host_side(config)
    ]
    results.append(await check_database(config))
    if role.talks_to_chats:
        results += check_adapters(config, loaded.secrets)
        results += await check_platform_credentials(config, loaded.secrets)
    else:
        results.append(CheckResult("adapters", Status.SKIP, NO_CHATS))
    results.append(check_model(config, loaded.secrets))
    if client is not None:
        client.close()  # type: ignore[attr-defined]
    return results
