"""Sends what the POS import found besides movements to the hub: observations and quarantined rows.

Observations (another system's belief about stock on hand) go to ``POST
/v1/observations``, quarantined import rows to ``POST /v1/import-issues``,
msgpack both ways (``protocol.reports``), with the agent's credential. Each
item's id is derived from its content — an observation from (system,
location, sku, observed_at_ms), a row from (file digest, line) — so resending
after a crash, or from a recreated POS store, is a duplicate the hub drops.

One loop shape (docs/design.md): wait for new data (``kick()``, called when the
drop folder imported a file) or a tick, send one batch, mark what the hub
answered for; on failure back off exponentially with full jitter and a cap,
log the first failure as a warning and the recovery once. Credentials refused
(401/403) wait ``auth_retry_s``. An item the hub rejects is logged with the
hub's reason and not sent again; one the hub does not mention is sent again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent import huberrors
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    INTERCEPTED,
    SYNC_ANSWER_MAX_BYTES,
    AnswerTooLarge,
    HubLoop,
    broken,
    hub_answered,
    hub_unavailable,
    not_the_hubs,
    read_answer,
    redirected,
    wrong_address,
)
from agent.huberrors import SyncedHubIds, hub_id_of, refusal, sync_url
from agent.pos import Observation, PosImportError, PosStore, PosStoreClosed, QuarantineEntry
from agent.replicator import AUTH_RETRY_S, TICK_S, TIMEOUT_S
from protocol import MSGPACK_CONTENT_TYPE, ProtocolError
from protocol.reports import (
    ISSUE_FILE_MAX_LEN,
    ISSUE_RAW_MAX_LEN,
    ISSUE_REASON_MAX_LEN,
    SOURCE_FILE_MAX_LEN,
    SYSTEM_MAX_LEN,
    ImportIssueReport,
    ImportIssuesRequest,
    ObservationReport,
    ObservationsRequest,
    ReportAnswer,
    decode_import_issues,
    decode_observations,
    decode_report_answer,
    encode_import_issues,
    encode_observations,
)
from protocol.retry import FULL_JITTER, RETRY_BASE_S, RETRY_MAX_S, Backoff, Streak, TurnFailed, run_turns, wait_for_any
from protocol.routes import HUB_ID_HEADER, IMPORT_ISSUES_PATH, OBSERVATIONS_PATH
from protocol.values import CONTROL_RE, shown

log = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class ReportsState:
    attempts: int = 0
    observations_sent: int = 0  # accepted by the hub
    issues_sent: int = 0
    rejected: int = 0  # refused by the hub (logged, not sent again)
    unsendable: int = 0  # broke the wire contract here (logged, not sent)
    failures: int = 0  # consecutive failed attempts
    last_error: str | None = None
    pending: bool | None = None  # whether the last attempt left more to send (None: not known yet)


def observation_id(o: Observation) -> str:
    digest = hashlib.blake2b(
        f"{o.system}\0{o.location}\0{o.sku}\0{o.observed_at_ms}".encode(), digest_size=12, person=b"shelfsync-obs"
    )
    return f"obs-{digest.hexdigest()}"


def issue_id(entry: QuarantineEntry) -> str:
    return f"row-{entry.sha256[:40]}-{entry.line}"


def _printable(text: str, limit: int) -> str:
    return CONTROL_RE.sub(" ", text)[:limit].strip() or "?"


class ReportSender(HubLoop):
    """Long-running sender of one POS store's observations and quarantined rows. ``async with`` it."""

    def __init__(
        self,
        store: PosStore,
        hub_url: str,
        token: str,
        *,
        agent_id: str,
        location: str,
        batch_size: int = BATCH_SIZE,
        tick_s: float = TICK_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        timeout_s: float = TIMEOUT_S,
        auth_retry_s: float = AUTH_RETRY_S,
        answer_max_bytes: int = SYNC_ANSWER_MAX_BYTES,
        outbox: SyncedHubIds | None = None,
        rng: random.Random | None = None,
        restores: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.store = store
        # How many times the agent found the hub's database restored (its outbox's count cache followed the hub's
        # feed again from the start): past the count the POS store last saw, every report is sent again.
        self._restores = restores
        self._outbox = outbox  # the hub's database id the agent last synced with: a refusal says when it changed
        self._hub_url = hub_url.rstrip("/")
        self._token = token
        self.agent_id = agent_id
        self.location = location
        self.batch_size = batch_size
        self.tick_s = tick_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._streak_said = False  # a failure of the streak was logged above DEBUG
        self._streak = Streak(Backoff(retry_base_s, retry_max_s, jitter=FULL_JITTER), rng or random.Random())
        self.timeout_s = timeout_s
        self.auth_retry_s = auth_retry_s
        self.answer_max_bytes = answer_max_bytes  # a longer answer is a failed attempt (agent.hub_loop)
        HubLoop.__init__(self)
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self._state = ReportsState()

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._stopped:
            raise PosImportError("this report sender was stopped; make a new one")
        if self._task is None:
            self._http()
            self._launch(self._run(), "shelfsync-reports")

    # stop(): what was not answered is sent next time.

    @property
    def state(self) -> ReportsState:
        return self._state

    def kick(self) -> None:
        """New observations or quarantined rows were stored: send now."""
        self._kick.set()

    def update_credentials(self, token: str, hub_url: str | None = None) -> None:
        self._token = token
        if hub_url is not None:
            self._hub_url = hub_url.rstrip("/")
        self._kick.set()

    async def wait_for(self, predicate: Callable[[ReportsState], bool]) -> ReportsState:
        """Wait until the state after some attempt satisfies ``predicate`` (bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._state))
            return self._state

    # --- the loop --------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await run_turns(
                self._turn, wait=self._wait, failed=self._failed, ends=(PosStoreClosed,), unexpected=_unexpected
            )
        except PosStoreClosed:
            log.info("The POS store was closed; reports to the hub stop.")

    async def _turn(self) -> float:
        return 0.0 if await self.send_once() else self.tick_s

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        await wait_for_any(delay_s, self._kick)  # kick(): new data, or new credentials, cut any wait short
        self._kick.clear()

    # --- one unit of work ----------------------------------------------------------
    async def send_once(self) -> bool:
        """Send one batch (observations first, then quarantined rows). True if more is waiting."""
        self._kick.clear()
        if self._restores is not None and (again := await self.store.resend_after_hub_restores(await self._restores())):
            log.warning(
                "The hub's database was restored from a backup since this agent's reports reached it: the %d"
                " observation(s) and quarantined POS row(s) this agent keeps are sent again (what the hub still"
                " holds is a duplicate).",
                again,
            )
        observations = await self.store.pending_observations(self.batch_size)
        if observations:
            await self._send_observations(observations)
            more = len(observations) == self.batch_size or bool(await self.store.pending_quarantine(1))
        else:
            issues = await self.store.pending_quarantine(self.batch_size)
            if issues:
                await self._send_issues(issues)
            more = len(issues) == self.batch_size
        if ended := self._streak.succeeded():
            said, self._streak_said = self._streak_said, False  # a 503 alone was said once for the agent
            log.log(
                logging.INFO if said else logging.DEBUG, "Reports reach the hub again after %d failed attempts.", ended
            )
        await self._update(failures=0, last_error=None, pending=more, attempts=self._state.attempts + 1)
        return more

    async def _send_observations(self, rows: list[tuple[int, Observation]]) -> None:
        by_id: dict[str, int] = {}
        items: list[ObservationReport] = []
        unsendable: list[int] = []
        for row_id, o in rows:
            item = ObservationReport(
                id=observation_id(o), location=o.location, sku=o.sku, system=o.system[:SYSTEM_MAX_LEN],
                on_hand=o.on_hand, observed_at_ms=o.observed_at_ms, source_file=o.source_file[:SOURCE_FILE_MAX_LEN],
            )  # fmt: skip
            single = encode_observations(ObservationsRequest(self.agent_id, (item,)))
            problem = _contract_problem(lambda body=single: decode_observations(body))  # type: ignore[misc]
            if problem:
                log.warning(
                    "The observation of %s at %s from %s cannot be reported: %s",
                    shown(o.sku),
                    shown(o.location),
                    shown(o.source_file, bare=True),
                    problem,
                )
                unsendable.append(row_id)
                continue
            by_id[item.id] = row_id
            items.append(item)
        if unsendable:
            await self.store.mark_observations_sent(unsendable)
            await self._update(unsendable=self._state.unsendable + len(unsendable))
        if not items:
            return
        body = encode_observations(ObservationsRequest(self.agent_id, tuple(items)))
        answer = await self._post(OBSERVATIONS_PATH, body)
        done, rejected = self._settle(answer, by_id, "observation")
        await self.store.mark_observations_sent(done)
        await self._update(
            observations_sent=self._state.observations_sent + len(done) - rejected,
            rejected=self._state.rejected + rejected,
        )

    async def _send_issues(self, entries: list[QuarantineEntry]) -> None:
        by_id: dict[str, int] = {}
        items: list[ImportIssueReport] = []
        for e in entries:
            item = ImportIssueReport(
                id=issue_id(e), location=self.location, file=_printable(e.file_name, ISSUE_FILE_MAX_LEN),
                line=max(0, e.line), reason=_printable(e.reason, ISSUE_REASON_MAX_LEN), raw=e.raw[:ISSUE_RAW_MAX_LEN],
            )  # fmt: skip
            by_id[item.id] = e.id
            items.append(item)
        request = ImportIssuesRequest(self.agent_id, tuple(items))
        problem = _contract_problem(lambda: decode_import_issues(encode_import_issues(request)))
        if problem:  # the location or agent id itself: nothing of this batch could ever be sent
            raise TurnFailed(f"quarantined rows cannot be reported: {problem}", level=logging.ERROR)
        answer = await self._post(IMPORT_ISSUES_PATH, encode_import_issues(request))
        done, rejected = self._settle(answer, by_id, "quarantined row")
        await self.store.mark_quarantine_sent(done)
        await self._update(
            issues_sent=self._state.issues_sent + len(done) - rejected, rejected=self._state.rejected + rejected
        )

    def _settle(self, answer: ReportAnswer, by_id: dict[str, int], what: str) -> tuple[list[int], int]:
        """Store row ids the hub answered for (accepted or rejected), and how many were rejected."""
        done = [by_id[i] for i in answer.accepted if i in by_id]
        rejected = [r for r in answer.rejected if r.id in by_id]
        if rejected:
            log.warning(
                "The hub refused %d %s(s), which will not be sent again (first: %s: %s).",
                len(rejected), what, rejected[0].id, rejected[0].reason,
            )  # fmt: skip
        done += [by_id[r.id] for r in rejected]
        if by_id and not done:
            raise TurnFailed(f"the hub answered for none of the {len(by_id)} {what}(s) sent", level=logging.ERROR)
        return done, len(rejected)

    async def _post(self, path: str, body: bytes) -> ReportAnswer:
        if self._stopped:
            raise PosImportError("this report sender was stopped; make a new one")
        session = self._http()
        url = self._hub_url + path
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": MSGPACK_CONTENT_TYPE}
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as resp:
                status, data = resp.status, await read_answer(resp, self.answer_max_bytes, f"answer to {path}")
                location = resp.headers.get("Location")
                content_type = resp.headers.get("Content-Type", "")
                hub_id = hub_id_of(resp.headers.get(HUB_ID_HEADER))
        except AnswerTooLarge as err:
            raise TurnFailed(str(err), level=logging.ERROR) from err
        except TimeoutError:
            raise TurnFailed(f"the hub at {url} did not answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as err:
            raise TurnFailed(
                await wrong_address(self._hub_url, err)
                or f"could not connect to the hub at {url} ({err.os_error.strerror or err.os_error})"
            ) from err
        except aiohttp.ClientError as err:
            wrong = await wrong_address(self._hub_url, err)
            raise TurnFailed(wrong or f"the connection to the hub at {url} failed ({broken(err)})") from err
        # Before the status: a web filter's 403 page is not the hub refusing the token, a portal's 200 not a bad answer.
        if (foreign := not_the_hubs(url, status, content_type, data, MSGPACK_CONTENT_TYPE)) is not None:
            raise TurnFailed(foreign, kind=INTERCEPTED)
        if status == 503:  # the hub migrating its database, or otherwise unavailable: said once for the agent
            message = _message(data)
            raise TurnFailed(f"the hub at {url} answered HTTP 503 ({message})", level=hub_unavailable(url, message))
        hub_answered(url)
        if status in (401, 403):
            refused, _ = await refusal(self._outbox, sync_url(self._hub_url), url, status, data, self.agent_id, hub_id)
            raise TurnFailed(refused, kind="credentials_refused", level=logging.ERROR)
        if 300 <= status < 400:
            raise TurnFailed(redirected(url, status, location), level=logging.ERROR)
        if status != 200:
            level = logging.WARNING if status >= 500 else logging.ERROR
            raise TurnFailed(f"the hub at {url} answered HTTP {status} ({_message(data)})", level=level)
        try:
            return decode_report_answer(data)
        except ProtocolError as err:
            raise TurnFailed(f"the hub's answer from {url} could not be decoded ({err})", level=logging.ERROR) from err

    # --- bookkeeping ---------------------------------------------------------------
    async def _failed(self, failure: TurnFailed) -> float:
        """Count and log a failed attempt; how long to wait before the next."""
        previous = self._state
        news, loud = self._streak.failed(failure), failure.level > logging.DEBUG
        news = news or (loud and not self._streak_said)  # the first said after the hub's 503s (hub_unavailable)
        self._streak_said = self._streak_said or (news and loud)
        if news:
            log.log(
                failure.level, "Reports to the hub failed, retrying with backoff: %s.", failure, exc_info=failure.cause
            )
        else:
            log.debug("Reports to the hub failed again: %s.", failure)
        await self._update(
            attempts=previous.attempts + 1, failures=self._streak.failures, last_error=str(failure), pending=True
        )
        return self.auth_retry_s if failure.kind == "credentials_refused" else self._streak.delay_s()

    async def _update(self, **changes: Any) -> None:
        self._state = dataclasses.replace(self._state, **changes)
        async with self._changed:
            self._changed.notify_all()


def _unexpected(err: Exception) -> TurnFailed:
    if isinstance(err, PosImportError):
        return TurnFailed(f"the POS store failed: {err}", level=logging.ERROR)
    return TurnFailed.unexpected(err)


def _contract_problem(check: Callable[[], Any]) -> str | None:
    try:
        check()
    except ProtocolError as err:
        return str(err)
    return None


def _message(body: bytes) -> str:
    return huberrors.error_message(body)  # a problem details answer, or an older hub's {"error": …}
