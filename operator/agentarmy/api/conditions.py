"""Condition types and reasons of every kind, named once.

Reasons are CamelCase words a machine matches on (kstatus, Argo CD, scripts);
keep them stable: renaming one is an API change.
"""

from __future__ import annotations

# -- types ---------------------------------------------------------------------
READY = "Ready"
"""Agent: its Pod runs and is Ready. Policy: accepted and in force."""
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
AVAILABLE = "Available"
"""Fleet: at least replicas - maxUnavailable Agents are available."""
RECONCILING = "Reconciling"
"""Fleet: not yet at the desired state (kstatus's abnormal-true condition)."""
HALTED = "Halted"
"""Fleet: the router's sentinel stopped dispatch (a bound breached); a person resumes it."""
POLICY_COMPLIANT = "PolicyCompliant"
"""Agent, Fleet: no rule of a selecting Policy is broken."""

# -- PolicyCompliant reasons -----------------------------------------------------
COMPLIANT = "Compliant"
POLICY_VIOLATION = "PolicyViolation"
"""An enforce-mode rule is broken: the operator stops what would grow the violation."""
AUDIT_VIOLATION = "AuditViolation"
"""Only audit-mode rules are broken: reported, nothing is stopped."""

# -- Agent Ready reasons (also Progressing/Degraded) ----------------------------
POD_READY = "PodReady"
POD_PENDING = "PodPending"
POD_NOT_READY = "PodNotReady"
CREATING_POD = "CreatingPod"
UPDATING_POD = "UpdatingPod"
REPLACING_POD = "ReplacingPod"
AGENT_EXITED = "AgentExited"
AGENT_RUNNING = "AgentRunning"
POD_CREATE_FAILED = "PodCreateFailed"
BLOCKED_BY_POLICY = "BlockedByPolicy"
"""The Agent needs a new Pod, but an enforce-mode Policy forbids its spec."""
INVALID_SPEC = "InvalidSpec"
RECONCILED = "Reconciled"

# -- Fleet reasons ---------------------------------------------------------------
MINIMUM_AGENTS_AVAILABLE = "MinimumAgentsAvailable"
MINIMUM_AGENTS_UNAVAILABLE = "MinimumAgentsUnavailable"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLING_UPDATE = "RollingUpdate"
SCALING_UP = "ScalingUp"
SCALING_DOWN = "ScalingDown"
WAITING_FOR_AGENTS = "WaitingForAgents"
CANARY_STEP = "CanaryStep"
"""Progressing=True: a canary holds part of the Agents on the new template and watches it."""
ROLLOUT_ABORTED = "RolloutAborted"
"""Progressing=False, Stalled=True: the canary broke maxErrorRate; the old template serves."""
HALTED_BY_RULE = {
    "maxErrorRate": "ErrorRateAboveBound",
    "maxTokensPerHour": "TokensPerHourAboveBound",
    "maxCostPerHour": "CostPerHourAboveBound",
}
"""Halted=True reasons: which sentinel bound the fleet breached."""
SENTINEL_BOUND_BREACHED = "SentinelBoundBreached"
"""Halted=True for a bound this operator version does not name (a newer router's)."""
RESUMED = "Resumed"
"""Halted=False after a halt: resumed by a person or a Policy change."""

# -- Policy Ready reasons --------------------------------------------------------
POLICY_ACTIVE = "Active"
"""Valid and evaluated on what it selects."""

# -- Task types --------------------------------------------------------------------
ACCEPTED = "Accepted"
"""Task: the router holds it (True), or why it does not yet (False: FleetNotFound, ...)."""
COMPLETE = "Complete"
"""Task: it succeeded (`kubectl wait --for=condition=Complete`)."""
FAILED = "Failed"
"""Task: it ended without success (failed, dead-lettered, cancelled or lost)."""
STALLED = "Stalled"
"""Task, Fleet: kstatus's abnormal-true condition for "will not get there by itself"
(a Fleet's aborted canary: Argo CD and kstatus read it as degraded/failed)."""

# -- Task reasons ------------------------------------------------------------------
SUBMITTED = "Submitted"
FLEET_NOT_FOUND = "FleetNotFound"
"""The Task names a Fleet that does not exist (yet); it is submitted once it does."""
REJECTED = "Rejected"
"""The router refused the task (its message says why); retried at a slow pace."""
ROUTER_UNAVAILABLE = "RouterUnavailable"
ROUTER_NOT_CONFIGURED = "RouterNotConfigured"
TASK_LOST = "TaskLost"
"""The router no longer knows the task it accepted (its store was reset)."""
