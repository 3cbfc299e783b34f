"""The web app's only way to Dagster: its GraphQL API over HTTP.

The app never opens the Dagster instance, so it needs no DAGSTER_HOME and may run on
another machine. A launch is what the UI's launchpad does: ``addDynamicPartition`` (a
duplicate is fine), then ``launchRun`` with the ``dagster/partition`` tag; the daemon
starts the queued run, so no request waits for a transcription.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import requests

from twiml_assets.feed.partitions import EPISODES
from twiml_assets.web.settings import redact_url

log = logging.getLogger(__name__)

# Equal to twiml_assets.jobs.EPISODE_JOB (tested): importing it would load every asset module.
EPISODE_JOB = "episode_pipeline"

PARTITION_TAG = "dagster/partition"
SOURCE_TAG = "twiml/launched_by"
PARTITION_ADDED = {"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"}
PHASES = {
    **dict.fromkeys(("QUEUED", "NOT_STARTED"), "queued"),
    **dict.fromkeys(("STARTING", "STARTED", "CANCELING", "MANAGED", "SUSPENDED"), "running"),
    **dict.fromkeys(("FAILURE", "CANCELED"), "failed"),
}

WORKSPACE_QUERY = """
query TwimlWorkspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name jobs { name } } }
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ADD_PARTITION_MUTATION = """
mutation TwimlAddPartition(
  $repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!
) {
  addDynamicPartition(
    repositorySelector: $repositorySelector
    partitionsDefName: $partitionsDefName
    partitionKey: $partitionKey
  ) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

RUN_SUMMARY = """
fragment TwimlRunSummary on Run {
  runId
  status
  creationTime
  startTime
  endTime
  tags { key value }
}
"""

RUN_DETAIL = """
fragment TwimlRunDetail on Run {
  ...TwimlRunSummary
  stepStats { stepKey status }
  executionPlan { steps { key } }
}
"""

LAUNCH_MUTATION = (
    """
mutation TwimlLaunch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { ...TwimlRunSummary } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
    + RUN_SUMMARY
)

RUNS_QUERY = (
    """
query TwimlRuns($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { ...TwimlRunSummary } }
    ... on Error { message }
  }
}
"""
    + RUN_SUMMARY
)

RUN_QUERY = (
    """
query TwimlRun($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { ...TwimlRunDetail }
    ... on Error { message }
  }
}
"""
    + RUN_SUMMARY
    + RUN_DETAIL
)


class DagsterUnavailableError(RuntimeError):
    """Dagster could not be reached or answered with an error; the message is page-safe."""


def _refuse(what: str, result: dict[str, Any], message: str) -> NoReturn:
    """Log Dagster's own error message (never shown on a page) and raise a page-safe one."""
    log.warning("%s: %s", what, str(result.get("message", ""))[:300])
    raise DagsterUnavailableError(message)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of ``episode_pipeline`` as the pages need it."""

    run_id: str
    status: str
    partition: str | None
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    steps_total: int | None = None
    steps_done: int = 0
    current_step: str | None = None
    failed_step: str | None = None

    @property
    def phase(self) -> str:
        """``queued``, ``running``, ``succeeded`` or ``failed``."""
        return PHASES.get(self.status, "succeeded")

    @property
    def active(self) -> bool:
        return self.phase in {"queued", "running"}

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["run_id"], fields["partition"]
        return {"id": self.run_id, "phase": self.phase, **fields}

    @classmethod
    def from_graphql(cls, run: dict[str, Any]) -> RunInfo:
        tags = {t["key"]: t["value"] for t in run.get("tags") or []}
        stats = run.get("stepStats") or []
        plan = run.get("executionPlan")

        def first(status: str) -> str | None:
            return next((s["stepKey"] for s in stats if s.get("status") == status), None)

        return cls(
            run_id=run["runId"],
            status=run["status"],
            partition=tags.get(PARTITION_TAG),
            created=run.get("creationTime"),
            started=run.get("startTime"),
            ended=run.get("endTime"),
            steps_total=len(plan["steps"]) if plan else None,
            steps_done=sum(s.get("status") in {"SUCCESS", "SKIPPED"} for s in stats),
            current_step=first("IN_PROGRESS"),
            failed_step=first("FAILURE"),
        )


class DagsterClient:
    """A small typed client for the five GraphQL operations the app uses."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.timeout = timeout
        self.session = requests.Session()
        self.job = EPISODE_JOB
        self.partitions_def = EPISODES
        self._repository: dict[str, str] | None = None

    def execute(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document; raise DagsterUnavailableError on any transport error."""
        where = redact_url(self.url)
        try:
            resp = self.session.post(
                self.url,
                json={"query": document, "variables": variables or {}},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            log.warning("Dagster GraphQL at %s unreachable: %s", where, type(exc).__name__)
            raise DagsterUnavailableError("Dagster is not reachable") from None
        if resp.status_code != 200:
            log.warning("Dagster GraphQL at %s answered HTTP %s", where, resp.status_code)
            raise DagsterUnavailableError(f"Dagster answered HTTP {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            raise DagsterUnavailableError("Dagster answered with something not JSON") from None
        if body.get("errors"):
            messages = "; ".join(str(e.get("message", e))[:300] for e in body["errors"])
            log.warning("Dagster GraphQL error: %s", messages)
            raise DagsterUnavailableError("Dagster rejected the request (see the server log)")
        return body.get("data") or {}

    def repository(self) -> dict[str, str]:
        """The selector of the repository that defines the episode job (found once, cached)."""
        if self._repository is not None:
            return self._repository
        data = self.execute(WORKSPACE_QUERY)["workspaceOrError"]
        if data["__typename"] != "Workspace":
            _refuse("Dagster workspace error", data, "Dagster could not load its workspace")
        for entry in data["locationEntries"]:
            location = entry.get("locationOrLoadError") or {}
            if location.get("__typename") == "PythonError":
                message = location.get("message", "")[:300]
                log.warning("code location %s failed to load: %s", entry["name"], message)
                continue
            for repo in location.get("repositories", []):
                if any(job["name"] == self.job for job in repo["jobs"]):
                    self._repository = {
                        "repositoryLocationName": location["name"],
                        "repositoryName": repo["name"],
                    }
                    return self._repository
        raise DagsterUnavailableError(
            f"no loaded code location defines the job {self.job!r} (is it still loading?)"
        )

    def ensure_partition(self, key: str) -> None:
        """Register ``key`` in the dynamic partitions definition; an existing key is fine."""
        variables = {
            "repositorySelector": self.repository(),
            "partitionsDefName": self.partitions_def,
            "partitionKey": key,
        }
        result = self.execute(ADD_PARTITION_MUTATION, variables)["addDynamicPartition"]
        if result["__typename"] not in PARTITION_ADDED:
            message = f"Dagster refused to add the partition {key}"
            _refuse(f"addDynamicPartition {key}", result, message)

    def launch(self, key: str) -> RunInfo:
        """Queue one ``episode_pipeline`` run for partition ``key`` (registered first)."""
        self.ensure_partition(key)
        tags = [{"key": PARTITION_TAG, "value": key}, {"key": SOURCE_TAG, "value": "web"}]
        params = {
            "selector": {**self.repository(), "jobName": self.job},
            "runConfigData": {},
            "executionMetadata": {"tags": tags},
        }
        result = self.execute(LAUNCH_MUTATION, {"executionParams": params})["launchRun"]
        kind = result["__typename"]
        if kind == "LaunchRunSuccess":
            return RunInfo.from_graphql(result["run"])
        if kind in {"PipelineNotFoundError", "RepositoryNotFoundError"}:
            self._repository = None  # the workspace was reloaded: discover it again next time
        detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", []))
        log.warning("launchRun %s for %s: %s", kind, key, detail[:500])
        raise DagsterUnavailableError(f"Dagster could not launch the run ({kind})")

    def runs(self, key: str | None = None, limit: int = 1) -> list[RunInfo]:
        """The newest runs of the job, of one partition when ``key`` is given."""
        run_filter: dict[str, Any] = {"pipelineName": self.job}
        if key is not None:
            run_filter["tags"] = [{"key": PARTITION_TAG, "value": key}]
        result = self.execute(RUNS_QUERY, {"filter": run_filter, "limit": limit})["runsOrError"]
        if result["__typename"] != "Runs":
            _refuse("runsOrError", result, "Dagster could not list runs")
        return [RunInfo.from_graphql(r) for r in result["results"]]

    def latest_runs(self, limit: int = 1000) -> dict[str, RunInfo]:
        """The newest run of every partition among the last ``limit`` runs (one request)."""
        oldest_first = reversed(self.runs(limit=limit))  # so a partition's newest run is kept
        return {run.partition: run for run in oldest_first if run.partition}

    def run(self, run_id: str) -> RunInfo | None:
        """One run with its step progress, None when Dagster does not know it."""
        result = self.execute(RUN_QUERY, {"runId": run_id})["runOrError"]
        if result["__typename"] == "Run":
            return RunInfo.from_graphql(result)
        if result["__typename"] != "RunNotFoundError":
            _refuse(f"runOrError {run_id}", result, "Dagster could not read the run")
        return None

    def latest_run(self, key: str) -> RunInfo | None:
        """The newest run of partition ``key`` with its progress, or None."""
        runs = self.runs(key, limit=1)
        return self.run(runs[0].run_id) if runs else None
