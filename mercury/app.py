"""Builds and owns every service of a running Mercury; start, stop, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from typing import Any

from mercury.config import LoadedConfig
from mercury.core.roles import Role, role_problem, run_tag, space_limit_for
from mercury.http.server import HttpServer
from mercury.logging import get_logger

log = get_logger("mercury.app")

# How long running runs may go on after SIGTERM before they are killed and requeued.
RUN_GRACE_S = 10.0
# How long the whole shutdown may take before remaining work is abandoned.
SHUTDOWN_TIMEOUT_S = 40.0
# How often a gateway or worker re-reads every process's spending (shared caps).
BUDGET_RESYNC_S = 5.0
# How long a worker's run waits for its engine to answer again before its job goes back
# to the queue for the other workers.
WORKER_RUN_GIVE_UP_S = 15.0


class StartupError(Exception):
    """Mercury cannot start; the message is one clear line for the operator."""


class App:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        accept_empty_database: bool = False,
        role: Role = Role.ALL,
    ) -> None:
        self.loaded = loaded
        # What this process does (core/roles.py): everything, the gateway or a worker.
        self.role = role
        # Unique per process start: its claims' owner, its heartbeat row, its run ids' tag.
        self.process_id = f"mercury-{uuid.uuid4().hex[:12]}"
        self.remote: Any = None  # a gateway's view of the workers' runs (remote_runs.py)
        self.delivery: Any = None  # a gateway's delivery loop (pipeline/delivery.py)
        self.abort_watch: Any = None  # a worker's ear for /stop (pipeline/abort_watch.py)
        self._resync: Any = None  # re-reads the spending counters (a BackgroundTask)
        # The operator confirmed that an empty database is meant (`--accept-empty-database`).
        self.accept_empty_database = accept_empty_database
        self.db_watch: Any = None
        self.config = loaded.config
        self.docker: Any = None
        self.runner: Any = None
        self.db: Any = None
        self.host: Any = None
        self.pipeline: Any = None
        self.scheduler: Any = None
        self.ext_hooks: Any = None  # the enabled extensions' host hooks (extensions/hooks.py)
        self.adapters: dict[str, Any] = {}
        self.auth: Any = None  # the one login layer (WebAuth) of the web chat and dashboard
        self.dashboard: Any = None
        self.heartbeat: Any = None  # this process's row for `mercury status` (heartbeat.py)
        self.http = HttpServer(self.config.server.host, self.config.server.port)
        self._started_adapters: list[Any] = []
        self._started = False

    async def start(self) -> None:
        from mercury.datadir import prepare_data_dir
        from mercury.sandbox.engine import EngineUnavailable, connect_engine, use_docker_host
        from mercury.storage import Database
        from mercury.storage.migrate import DatabaseTooNew, upgrade

        cfg = self.config
        url = cfg.resolved_database_url()
        problem = role_problem(self.role, url)
        limit, refused = space_limit_for(self.role, cfg.disk.space_limit)
        if problem or refused:
            raise StartupError(str(problem or refused))
        cfg.disk.space_limit = limit  # type: ignore[assignment]  # one of the literals
        try:
            # Private to Mercury's user (0700): it holds tokens and every space.
            prepare_data_dir(cfg)
        except OSError as exc:
            raise StartupError(str(exc)) from exc
        _raise_file_limit()
        if self.role.runs_containers:
            use_docker_host(cfg.container.docker_host)
            try:
                self.docker, info = await asyncio.to_thread(connect_engine, 10.0)
            except EngineUnavailable as exc:
                raise StartupError(str(exc)) from exc
            log.info("docker engine", version=info.version, endpoint=info.endpoint)
        try:
            await upgrade(url)
        except DatabaseTooNew as exc:  # its own line already says what to do
            raise StartupError(f"database_url: {exc}") from exc
        except Exception as exc:
            from mercury.logging import first_line
            from mercury.storage import safe_url

            raise StartupError(
                f"database_url: cannot migrate {safe_url(url)}: {first_line(exc)}"
            ) from exc
        self.db = Database(url)
        await self._guard_database()
        if self.role is Role.GATEWAY:
            await self._build_gateway()
        else:
            await self._build_services()
        # The first beat before claiming: another process starting now must see this one
        # alive, or it would take this one's jobs for a dead process's.
        await self._start_heartbeat()
        await self.pipeline.start(claim=self.role.runs_containers)
        if self.role is not Role.ALL:
            from mercury.pipeline.background import BackgroundTask, every

            # Caps count every process's spending: re-read it every few seconds.
            self._resync = BackgroundTask()
            self._resync.start(
                every(
                    BUDGET_RESYNC_S,
                    self.pipeline.budget.resync,
                    what="re-reading the spending counters",
                    wait_first=True,
                ),
                name="budget resync",
            )
        if self.abort_watch is not None:
            self.abort_watch.start()
        if self.scheduler is not None and self.role.talks_to_chats:
            self.scheduler.start()
        if self.role.talks_to_chats:
            await self._start_chats()
        await self.heartbeat.beat()  # the adapters as they are now started
        self._started = True
        log.info(
            "mercury started",
            instance=cfg.instance,
            role=self.role.value,
            process=self.process_id,
            url=f"http://{cfg.server.host}:{self.http.bound_port}"
            if self.role.talks_to_chats
            else None,
            adapters=sorted(self.adapters),
        )

    async def _start_chats(self) -> None:
        """The adapters, the replies' delivery, then the web server (not on a worker)."""
        from mercury.http.server import ServerStartError

        for name, adapter in self.adapters.items():
            try:
                await adapter.start(self.pipeline.inbound)
            except Exception as exc:
                from mercury.logging import scrub_text

                raise StartupError(f"adapters.{name}: {scrub_text(str(exc))}") from exc
            self._started_adapters.append(adapter)
        if self.delivery is not None:
            self.delivery.start()  # a gateway sends what the workers stored
        else:
            self.pipeline.adapters_started()
        # Listen last: once /healthz answers, every adapter accepts messages.
        try:
            await self.http.start()
        except ServerStartError as exc:
            raise StartupError(str(exc)) from exc

    async def _build_gateway(self) -> None:
        """A gateway: chats, web server, dashboard, scheduler and delivery; no runner, no
        host API, no engine. Runs are the workers'; this process sees them through the
        database (pipeline/remote_runs.py) and sends what they stored (delivery.py)."""
        from mercury.pipeline.delivery import GatewayDelivery
        from mercury.pipeline.remote_runs import RemoteRuns
        from mercury.pipeline.scheduler import Scheduler
        from mercury.pipeline.service import Pipeline

        cfg = self.config
        self._load_extensions()  # checked here too: a broken one stops start-up
        self.ext_hooks = None  # their host hooks run around runs: on the workers
        try:
            self.remote = RemoteRuns(cfg, self.db, refresh=max(cfg.workers.poll, 1.0))
        except ValueError as exc:  # container.user
            raise StartupError(str(exc)) from exc
        self._build_adapters()
        self.pipeline = Pipeline(
            cfg,
            self.loaded.secrets,
            self.db,
            self.remote,
            None,
            self.adapters,
            owner=self.process_id,
            lease=cfg.workers.lease,
        )
        self.delivery = GatewayDelivery(
            self.db, self.pipeline.executor.outbox, poll=cfg.workers.poll
        )
        if cfg.scheduler.enabled:
            self.scheduler = Scheduler.for_app(cfg, self.db, self.pipeline)
        self.remote.start()
        self._build_dashboard()

    async def _build_services(self) -> None:
        from mercury.api.routes import mount_space_api
        from mercury.api.runhost import RunHost
        from mercury.pipeline.service import Pipeline, model_problem
        from mercury.sandbox.agentimage import AgentImageBuilder, ensure_agent_image
        from mercury.sandbox.engine import EngineUnavailable
        from mercury.sandbox.ext_image import ExtImageBuilder
        from mercury.sandbox.identity import host_owner_of
        from mercury.sandbox.resources import resources_dir
        from mercury.sandbox.runner import ContainerRunner
        from mercury.sandbox.types import ImageBuildState

        cfg = self.config
        secrets = self.loaded.secrets
        extensions = self._load_extensions()
        plan = extensions.install_plan()
        try:
            self.host = RunHost(cfg, secrets)
            # The agent image is built (as `mercury image build` does) when the engine
            # lacks it: now if missing, and again when a run finds it gone. The enabled
            # extensions' installs go into a derived image, built in the background; runs
            # use the agent image until it is there.
            images = ImageBuildState(
                cfg.container.image,
                builder=ExtImageBuilder(cfg.container, plan) if plan else None,
                restorer=AgentImageBuilder(cfg.container),
                packaged=extensions.packaged(),
            )
            self.runner = ContainerRunner(
                cfg,
                images,
                client=self.docker,
                resources_dir=resources_dir(),
                # Warm containers get their run's socket folder ahead of the run.
                socket_folders=self.host.server,
                preload=tuple(sorted({leg.provider for leg in cfg.model.chain})),
            )
        except (OSError, ValueError) as exc:  # container.user, disk.space_limit
            raise StartupError(str(exc)) from exc
        owner = host_owner_of(self.runner.identity)
        if owner:
            log.warning(
                "agents run as an id a host account has: it can read and change every space",
                problem=owner,
                fix="set container.user to an unused uid:gid (docs/security.md)",
            )
        log.info(
            "spaces",
            container_user=self.runner.identity.user,
            size_limit=self.runner.spaces.mode,
        )
        from mercury.pipeline.peers import live_run_tags
        from mercury.sandbox.contract import spared_run

        # Containers labelled with this instance belong to a dead process (unless another
        # live process of the instance shares the engine: its runs carry its tag).
        self.runner.run_tag = run_tag(self.process_id)
        others = await live_run_tags(self.db, self.process_id)
        removed = await self.runner.cleanup_orphans(others)
        if removed:
            log.warning("removed orphaned containers", count=removed)
        if self.role is Role.WORKER:
            # Other workers serve while this one's engine is away: its messages are never
            # failed for the outage (container.engine_outage_limit), they wait or move.
            self.runner.health.outage_limit = math.inf
            # A run its engine dropped goes back to the queue soon, for another worker.
            self.runner.health.run_give_up = WORKER_RUN_GIVE_UP_S
        try:
            # Built in the background: messages are accepted meanwhile and wait in the queue.
            await ensure_agent_image(self.docker, images)
        except EngineUnavailable as exc:
            raise StartupError(str(exc)) from exc
        if plan:
            # After the agent image: the derived one is built FROM it (found at once when
            # the engine has the tag for this plan already).
            images.rebuild()
        self.host.server.remove_stale(
            spare=lambda run_id: spared_run(run_id, self.runner.run_tag, others)
        )
        if self.role is Role.WORKER:
            from mercury.adapters.registry import enabled_platforms
            from mercury.pipeline.abort_watch import AbortWatch
            from mercury.pipeline.relay import relay_adapters

            # No chat connections here: what would be sent is stored for the gateway.
            self.adapters = dict(relay_adapters(enabled_platforms(cfg), self.db))
        else:
            self._build_adapters()
        self.pipeline = Pipeline(
            cfg,
            secrets,
            self.db,
            self.runner,
            self.host,
            self.adapters,
            owner=self.process_id,
            lease=cfg.workers.lease,
        )
        if self.role is Role.WORKER:
            self.pipeline.executor.deliver_replies = False  # the gateway sends them
            self.pipeline.executor.previews = False
            # Nobody wakes a worker when a message is queued (the gateway queues it): it
            # looks for work as often as the gateway looks for replies.
            self.pipeline.dispatcher.poll_interval = min(cfg.workers.poll, 1.0)
            self.abort_watch = AbortWatch(
                self.db, self.process_id, self.runner.abort, poll=cfg.workers.poll
            )
        self.pipeline.executor.extensions = extensions
        if extensions:
            from mercury.core.permissions import is_custom, permissions_of
            from mercury.sandbox.warm import UsualExtensions

            default = cfg.permissions.default_role
            # A custom default role's permissions are each space's own: unknown here.
            usual = extensions.for_run(permissions_of(default)) if not is_custom(default) else None
            if usual is not None and usual.names:
                self.runner.usual_extensions = UsualExtensions(usual.mounts, usual.names)
        self.pipeline.executor.hooks = self.ext_hooks
        from mercury.pipeline.scheduler import Scheduler

        mount_space_api(
            self.host.server,
            self.db,
            send_interim=self.pipeline.executor.send_interim,
            budget=self.pipeline.budget,
            timezone=cfg.scheduler.timezone,
        )
        if cfg.scheduler.enabled:
            # Checks due tasks like messages; told by the executor how their runs ended.
            # (A worker's only hears how runs ended: the gateway's checks due tasks.)
            self.scheduler = Scheduler.for_app(cfg, self.db, self.pipeline)
        if self.role is Role.ALL:
            self._build_dashboard()
        await self.host.start()
        if self.ext_hooks is not None:
            # Their startup hooks, then their jobs, before any message is taken.
            await self.ext_hooks.startup()
        problem = model_problem(cfg, secrets)
        if problem:
            log.warning("no model configured: runs will answer with what to configure")

    async def _start_heartbeat(self) -> None:
        """Write this process's heartbeat and adapters' state for `mercury status`, keyed
        by the dispatcher's owner id (the id a running job's `owner` carries)."""
        from mercury.pipeline.heartbeat import Heartbeat

        self.heartbeat = Heartbeat(
            self.db,
            process_id=self.process_id,
            instance=self.config.instance,
            # A worker's relays are no chat connections: the gateway reports those.
            adapters=self.adapters if self.role.talks_to_chats else {},
        )
        await self.heartbeat.start()

    def _load_extensions(self) -> Any:
        """The enabled extensions, checked: a broken one stops start-up with one line that
        names the extension and its field (docs/extensions.md)."""
        from mercury.extensions import ExtensionConfigError, load_enabled
        from mercury.extensions.hooks import hooks_of
        from mercury.extensions.runtime import ExtensionSet

        try:
            loaded = load_enabled(self.config)
            # Their host-side hooks files, imported now: a broken one stops start-up.
            hooks = hooks_of(list(loaded.values()))
        except (ExtensionConfigError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        self.ext_hooks = hooks if hooks else None
        if loaded:
            log.info(
                "extensions",
                enabled=[f"{e.name} {e.spec.version}" for e in loaded.values()],
            )
        return ExtensionSet(loaded.values())

    async def _guard_database(self) -> None:
        """Refuse a database that lost everything; watch the file from now on."""
        from mercury.dbguard import DatabaseWatch, emptied_database

        problem = await emptied_database(self.db, self.config.data_dir)
        if problem and not self.accept_empty_database:
            raise StartupError(problem)
        from mercury.pipeline.peers import second_sqlite_process

        # SQLite serves one process; a live other one (not a crashed one) refuses start.
        if other := await second_sqlite_process(self.db):
            raise StartupError(other)
        if problem:
            log.warning("starting on an empty database, as the operator asked", problem=problem)
        self.db_watch = DatabaseWatch(self.db)
        self.db_watch.start()
        self.http.add_health_check(self.db_watch.health)

    def _build_auth(self) -> Any:
        """The one login layer of the web chat and the dashboard (http/stored_sessions.py)."""
        from mercury.http.stored_sessions import build_web_auth

        return build_web_auth(self.config, self.loaded.secrets.dashboard_password, self.db)

    def _build_adapters(self) -> None:
        """One adapter per enabled platform; their HTTP routes (webhooks, the web chat)
        are mounted here, the one place, before the server listens."""
        from mercury.adapters.registry import build_adapters

        if self.auth is None:
            self.auth = self._build_auth()
        try:
            self.adapters = dict(build_adapters(self.config, self.loaded.secrets, auth=self.auth))
        except ValueError as exc:  # a missing token or setting, named in one line
            raise StartupError(str(exc)) from exc
        for adapter in self.adapters.values():
            self.http.app.add_routes(adapter.routes())

    def _build_dashboard(self) -> None:
        """The operator dashboard (`dashboard.enabled`), mounted on the same server as
        the adapters' routes, with the services its pages read and steer."""
        if not self.config.dashboard.enabled:
            return
        from mercury.dashboard import Dashboard, DashboardDeps

        if self.auth is None:
            self.auth = self._build_auth()
        self.dashboard = Dashboard(
            DashboardDeps(
                config=self.config,
                loaded=self.loaded,
                db=self.db,
                auth=self.auth,
                adapters=self.adapters,
                runner=self.runner if self.remote is None else self.remote,
                pipeline=self.pipeline,
                scheduler=self.scheduler,
                host=self.host,
                role=self.role,
            )
        )
        self.dashboard.mount(self.http.app)

    async def stop(self) -> None:
        """Stop every service; each step runs even if an earlier one failed."""
        for helper in (self.abort_watch, self.delivery, self.remote, self._resync):
            if helper is not None:
                with contextlib.suppress(Exception):
                    await helper.stop()
        self._resync = None
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                await self.scheduler.stop()
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                await self.pipeline.stop(RUN_GRACE_S)
        if self.ext_hooks is not None:
            with contextlib.suppress(Exception):
                await self.ext_hooks.shutdown()
            self.ext_hooks = None
        for adapter in reversed(self._started_adapters):
            with contextlib.suppress(Exception):
                await adapter.stop()
        self._started_adapters.clear()
        with contextlib.suppress(Exception):
            await self.http.stop()
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await self.runner.kill_all()
            with contextlib.suppress(Exception):
                await self.runner.aclose()
            self.runner = None
        if self.host is not None:
            with contextlib.suppress(Exception):
                await self.host.stop()
            self.host = None
        if self.heartbeat is not None:
            with contextlib.suppress(Exception):
                await self.heartbeat.stop()  # the last beat, marked stopped
            self.heartbeat = None
        if self.db_watch is not None:
            with contextlib.suppress(Exception):
                await self.db_watch.stop()
            self.db_watch = None
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self.db.dispose()
            self.db = None
        if self.docker is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.docker.close)
            self.docker = None
        if self._started:
            log.info("mercury stopped")
        self._started = False


def _raise_file_limit() -> None:
    """Use the hard limit of open files: each run holds sockets, pipes and connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
