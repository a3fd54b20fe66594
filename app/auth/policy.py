"""The role x endpoint table: who may call what. Every route of the app has an entry (a test checks it).

An entry is PUBLIC (no credentials), ANY (any authenticated user or API key), USERS (any user, not an API
key) or a set of roles. The dependency in app/api/security.py looks the matched route up here on every request;
a route without an entry is refused (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.principal import Principal, Role


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call one endpoint."""

    public: bool = False
    roles: frozenset[Role] | None = None  # None: every role
    users_only: bool = False  # API keys are refused
    note: str = ""  # a rule the endpoint adds on top (shown in the README)

    def allows(self, principal: Principal) -> bool:
        if self.public:
            return True
        if self.users_only and principal.kind != "user":
            return False
        return self.roles is None or principal.role in self.roles

    def describe(self) -> str:
        text = self._who()
        return f"{text} ({self.note})" if self.note else text

    def _who(self) -> str:
        if self.public:
            return "public"
        if self.roles is None:
            return "any user" if self.users_only else "any user or API key"
        listed = ", ".join(r.value for r in Role if r in self.roles)
        return f"users: {listed}" if self.users_only else listed


def roles(*allowed: Role, note: str = "") -> Access:
    return Access(roles=frozenset(allowed), note=note)


def people(*allowed: Role, note: str = "") -> Access:
    return Access(roles=frozenset(allowed), users_only=True, note=note)


PUBLIC = Access(public=True)
ANY = Access()
USERS = Access(users_only=True)
ADMIN = roles(Role.ADMIN)
QA_ADMIN = roles(Role.QA, Role.ADMIN)
SIGNERS = roles(Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.ADMIN,
                note="and only people: API keys and automation accounts never sign")

# One replica's calls on another (app/cluster/forward.py): no person's credentials, a signature under the service key.
REPLICAS = Access(public=True, note="other replicas only: signed with the shared service key, else 401")

OWN_CONTACTS = Access(users_only=True, note="one's own contact points; an admin anyone's")

V1 = "/api/v1"

POLICY: dict[tuple[str, str], Access] = {
    # The process itself and the API's description: no data, no credentials.
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", f"{V1}/records/schema"): PUBLIC,  # the batch record's JSON Schema (also in /openapi.json)
    ("POST", f"{V1}/auth/login"): PUBLIC,
    # Reading the plant: anyone signed in.
    ("GET", f"{V1}/devices"): ANY,
    ("GET", f"{V1}/devices/{{name}}"): ANY,
    ("GET", f"{V1}/channels"): ANY,
    ("GET", f"{V1}/channels/{{channel_id}}/telemetry"): ANY,
    ("GET", f"{V1}/stream"): ANY,
    ("GET", f"{V1}/auth/me"): ANY,
    ("POST", f"{V1}/auth/logout"): ANY,
    ("POST", f"{V1}/auth/refresh"): USERS,
    # The inactivity lock (app/auth/inactivity.py): the dashboard's heartbeat, the locked screen.
    ("POST", f"{V1}/auth/activity"): USERS,
    ("POST", f"{V1}/auth/unlock"): Access(users_only=True, note="one's own password, or another user's login"),
    ("GET", f"{V1}/signatures"): ANY,
    # One's own password: people only.
    ("POST", f"{V1}/users/me/password"): USERS,
    # Accounts and keys.
    ("GET", f"{V1}/users"): QA_ADMIN,
    ("POST", f"{V1}/users"): ADMIN,
    ("POST", f"{V1}/users/{{user_id}}/disable"): ADMIN,
    ("POST", f"{V1}/users/{{user_id}}/enable"): ADMIN,
    ("POST", f"{V1}/users/{{user_id}}/unlock"): ADMIN,
    ("PATCH", f"{V1}/users/{{user_id}}"): roles(Role.ADMIN, note="reason required; not one's own role; "
                                                                "the last active admin stays admin"),
    ("GET", f"{V1}/apikeys"): ADMIN,
    ("POST", f"{V1}/apikeys"): ADMIN,
    ("POST", f"{V1}/apikeys/{{key_id}}/revoke"): ADMIN,
    # Sessions in use: the list (never a token) and the revocation, with a reason.
    ("GET", f"{V1}/sessions"): ADMIN,
    ("POST", f"{V1}/sessions/{{session_id}}/revoke"): roles(Role.ADMIN, note="reason required"),
    # Contact points (how notifications reach a person): one's own; an admin anyone's (checked by the route).
    ("GET", f"{V1}/users/{{username}}/contact-points"): OWN_CONTACTS,
    ("POST", f"{V1}/users/{{username}}/contact-points"): OWN_CONTACTS,
    ("PATCH", f"{V1}/contact-points/{{contact_id}}"): OWN_CONTACTS,
    ("POST", f"{V1}/contact-points/{{contact_id}}/test"): OWN_CONTACTS,
    # Records.
    ("GET", f"{V1}/audit"): QA_ADMIN,
    ("GET", f"{V1}/audit/verify"): QA_ADMIN,
    ("POST", f"{V1}/signatures"): SIGNERS,  # plus Principal.can_sign, checked by the signature service
    # The protocol: recipes, runs, steps, deviations.
    ("GET", f"{V1}/recipes"): ANY,
    ("POST", f"{V1}/recipes"): roles(Role.QA, Role.ADMIN, note="signed 'approved' by a person"),
    ("GET", f"{V1}/recipes/{{key}}/{{version}}"): ANY,
    ("GET", f"{V1}/runs"): ANY,
    ("POST", f"{V1}/runs"): roles(Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN),
    ("GET", f"{V1}/runs/{{run_id}}"): ANY,
    ("POST", f"{V1}/runs/{{run_id}}/steps/{{step_key}}"): roles(
        Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.AUTOMATION,
        note="override: supervisor only, QA for the release step; the release step: QA, signed 'approved'"),
    ("GET", f"{V1}/runs/{{run_id}}/steps/{{step_key}}"): ANY,
    ("POST", f"{V1}/runs/{{run_id}}/steps/{{step_key}}/corrections"): roles(
        Role.SUPERVISOR, note="signed 'approved' by a person"),
    ("POST", f"{V1}/runs/{{run_id}}/count-imports"): roles(Role.OPERATOR, Role.SUPERVISOR, Role.AUTOMATION),
    ("POST", f"{V1}/runs/{{run_id}}/dose-decision"): roles(Role.QA, note="signed 'approved' by a person"),
    ("POST", f"{V1}/runs/{{run_id}}/qc-results/{{test}}"): roles(Role.SUPERVISOR, Role.QA, Role.AUTOMATION,
                                                                 note="the lab's result, audited"),
    ("POST", f"{V1}/runs/{{run_id}}/hold"): roles(Role.SUPERVISOR, Role.QA),
    ("POST", f"{V1}/runs/{{run_id}}/resume"): roles(Role.QA, note="signed 'approved' by a person"),
    ("POST", f"{V1}/runs/{{run_id}}/abort"): roles(Role.SUPERVISOR, Role.QA),
    ("GET", f"{V1}/deviations"): ANY,
    ("GET", f"{V1}/deviations/{{deviation_id}}"): ANY,
    ("POST", f"{V1}/deviations/{{deviation_id}}/comments"): USERS,
    ("POST", f"{V1}/deviations/{{deviation_id}}/close"): roles(Role.QA, note="signed 'approved' by a person"),
    # Supervised control: people (and keys) of the process roles; QA reviews, admins manage accounts.
    ("POST", f"{V1}/devices/{{name}}/setpoints"): roles(
        Role.OPERATOR, Role.SUPERVISOR, note="a held run's devices: none by hand; see Setpoint control"),
    ("GET", f"{V1}/devices/{{name}}/setpoints"): ANY,
    # Calibration records of device points: supervisors and admins record them; anyone reads them.
    ("POST", f"{V1}/devices/{{device}}/points/{{point}}/calibrations"): roles(Role.SUPERVISOR, Role.ADMIN),
    ("GET", f"{V1}/devices/{{device}}/points/{{point}}/calibrations"): ANY,
    ("GET", f"{V1}/calibrations"): ANY,
    # Alarms (ISA-18.2): anyone reads; people act, with a comment (audited as the reason).
    ("GET", f"{V1}/alarms"): ANY,
    ("GET", f"{V1}/alarms/history"): ANY,
    ("GET", f"{V1}/alarms/{{alarm_id}}"): ANY,
    ("POST", f"{V1}/alarms/{{alarm_id}}/acknowledge"): people(Role.OPERATOR, Role.SUPERVISOR, note="comment required"),
    ("POST", f"{V1}/alarms/{{alarm_id}}/shelve"): people(
        Role.OPERATOR, Role.SUPERVISOR, note="comment required; at most CULTURECTL_ALARM_SHELVE_MAX_MINUTES"),
    ("POST", f"{V1}/alarms/{{alarm_id}}/unshelve"): people(Role.OPERATOR, Role.SUPERVISOR, note="comment required"),
    ("POST", f"{V1}/alarms/{{alarm_id}}/out-of-service"): people(Role.SUPERVISOR, note="comment required"),
    ("POST", f"{V1}/alarms/{{alarm_id}}/return-to-service"): people(Role.SUPERVISOR, note="comment required"),
    ("GET", f"{V1}/runs/{{run_id}}/excursions"): ANY,
    # The batch record: the current draft (people and keys of the process and QA roles; automation feeds data in and
    # has no need of the whole record with the patient's identity); QA reviews its exceptions; its issued versions
    # are read as issued.
    ("GET", f"{V1}/runs/{{run_id}}/record"): roles(Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.ADMIN),
    ("GET", f"{V1}/runs/{{run_id}}/record.pdf"): roles(Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.ADMIN),
    ("POST", f"{V1}/runs/{{run_id}}/record/exceptions/{{key}}/review"): people(Role.QA, note="signed 'reviewed'"),
    ("POST", f"{V1}/runs/{{run_id}}/record/reviews"): people(Role.QA, note="signed 'reviewed'"),
    ("GET", f"{V1}/runs/{{run_id}}/record/versions"): ANY,
    ("GET", f"{V1}/runs/{{run_id}}/record/versions/{{number}}"): ANY,
    ("GET", f"{V1}/runs/{{run_id}}/record/versions/{{number}}/pdf"): ANY,
    # Notifications: the policy (rules, rotas), on-call overrides, what was sent.
    ("GET", f"{V1}/notifications/policy"): ANY,
    ("GET", f"{V1}/notifications/policy/versions"): ANY,
    ("PUT", f"{V1}/notifications/policy"): people(Role.SUPERVISOR, Role.ADMIN, note="reason required"),
    ("GET", f"{V1}/notifications/oncall"): ANY,
    ("GET", f"{V1}/notifications/overrides"): ANY,
    ("POST", f"{V1}/notifications/overrides"): people(Role.SUPERVISOR, Role.ADMIN, note="reason required"),
    ("POST", f"{V1}/notifications/overrides/{{override_id}}/revoke"): people(Role.SUPERVISOR, Role.ADMIN,
                                                                              note="reason required"),
    ("GET", f"{V1}/notifications/episodes"): ANY,
    ("GET", f"{V1}/notifications/deliveries/{{delivery_id}}"): ANY,
    ("POST", f"{V1}/notifications/test"): people(Role.ADMIN, note="sends through the real channels, each send "
                                                                  "audited"),
    # The dashboard's pages and fragments (app/web): without credentials a page redirects to the login page.
    ("GET", "/login"): PUBLIC,
    # a notification's single-use link: the page asks for the recipient's password (app/web/ack.py)
    ("GET", "/ack/{token}"): PUBLIC,
    ("POST", "/ack/{token}"): PUBLIC,
    ("POST", "/internal/cluster/setpoints/{device}"): REPLICAS,
    ("POST", "/internal/cluster/alarms/{alarm_id}/{action}"): REPLICAS,
    ("GET", "/"): ANY,
    ("GET", "/runs/{run_id}"): ANY,
    ("GET", "/alarms"): ANY,
    ("GET", "/audit"): QA_ADMIN,
    ("GET", "/fragments/runs"): ANY,
    ("GET", "/fragments/alarms"): ANY,
    ("GET", "/runs/{run_id}/fragments/timeline"): ANY,
    ("GET", "/runs/{run_id}/fragments/record"): ANY,
    ("GET", "/runs/{run_id}/record"): roles(Role.OPERATOR, Role.SUPERVISOR, Role.QA, Role.ADMIN),  # the batch record
    # the runs archive and QA's deviations (app/web/archive.py, app/web/qa.py)
    ("GET", "/runs"): ANY,
    ("GET", "/fragments/archive"): ANY,
    ("GET", "/deviations"): ANY,
    ("GET", "/fragments/deviations"): ANY,
    ("GET", "/deviations/{deviation_id}"): ANY,
    # Devices and recipes (app/web/equipment.py, app/web/recipe_pages.py); the setpoint form posts to the API
    ("GET", "/devices"): ANY,
    ("GET", "/devices/{name}"): ANY,
    ("GET", "/devices/{name}/fragments/alarms"): ANY,
    ("GET", "/recipes"): ANY,
    ("GET", "/recipes/diff"): ANY,
    ("GET", "/recipes/{key}/{version}"): ANY,
    # People (app/web/people.py): users, API keys, sessions in use; notification rules and rotas.
    ("GET", "/people"): ADMIN,
    ("GET", "/people/notifications"): roles(Role.SUPERVISOR, Role.ADMIN),  # its forms: as their API routes allow
    ("GET", "/people/{user_id}"): ADMIN,
}


def access_for(method: str, path: str) -> Access | None:
    """The entry of a route (`path` as declared, e.g. /api/v1/channels/{channel_id}/telemetry); HEAD is GET."""
    method = "GET" if method == "HEAD" else method
    return POLICY.get((method, path))


def policy_markdown() -> str:
    """The table as docs/api.md shows it (a test keeps the doc equal to this)."""
    lines = ["| method and path | who |", "|---|---|"]
    lines += [f"| `{m} {p}` | {a.describe()} |" for (m, p), a in POLICY.items()]
    return "\n".join(lines)
