"""`/api/v1/audit-log`: who changed what and when, written in the same transaction as the change."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.models import AuditEntry, Role, User
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, start_session

AUDIT = "/api/v1/audit-log"
SERVICES = "/api/v1/services"
USERS = "/api/v1/users"


@pytest.fixture
async def admin(session):
    return await create_user(session, role=Role.admin)


@pytest.fixture
async def admin_headers(admin):
    return (await start_session(admin)).headers


async def entries(client, headers, **params) -> list[dict]:
    response = await client.get(AUDIT, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def add_entries(session, *specs: tuple[str, str, datetime]) -> None:
    for action, entity_id, created_at in specs:
        session.add(
            AuditEntry(action=action, entity_type=action.split(".")[0], entity_id=entity_id, created_at=created_at)
        )
    await session.commit()


class TestAccess:
    async def test_anonymous_is_unauthorized(self, client):
        assert_unauthorized(await client.get(AUDIT))

    @pytest.mark.parametrize("role", [Role.user, Role.staff])
    async def test_only_admins(self, client, session, role):
        headers = (await start_session(await create_user(session, role=role))).headers
        assert_problem(await client.get(AUDIT, headers=headers), 403, "forbidden")


class TestListing:
    async def test_newest_first_with_the_page_envelope(self, client, session, admin_headers):
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        await add_entries(session, ("service.create", "a", t0), ("service.update", "a", t0 + timedelta(hours=1)))

        response = await client.get(AUDIT, headers=admin_headers)

        body = response.json()
        assert [e["action"] for e in body["items"]] == ["service.update", "service.create"]
        assert (body["total"], body["limit"], body["offset"]) == (2, 50, 0)
        assert body["items"][0] == {
            "id": body["items"][0]["id"],
            "actor_id": None,
            "action": "service.update",
            "entity_type": "service",
            "entity_id": "a",
            "before": None,
            "after": None,
            "created_at": "2030-01-01T01:00:00Z",
        }

    async def test_pagination(self, client, session, admin_headers):
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        await add_entries(session, *[("service.update", str(n), t0 + timedelta(minutes=n)) for n in range(5)])

        body = (await client.get(AUDIT, params={"limit": 2, "offset": 2}, headers=admin_headers)).json()

        assert ([e["entity_id"] for e in body["items"]], body["total"]) == (["2", "1"], 5)

    async def test_filters(self, client, session, admin, admin_headers):
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        await add_entries(
            session,
            ("service.create", "s1", t0),
            ("service.update", "s1", t0 + timedelta(days=1)),
            ("service.create", "s2", t0 + timedelta(days=2)),
            ("schedule.replace", "s1", t0 + timedelta(days=3)),
        )
        session.add(AuditEntry(actor_id=admin.id, action="user.update", entity_type="user", entity_id="u1"))
        await session.commit()

        async def actions(**params) -> list[str]:
            return [f"{e['action']} {e['entity_id']}" for e in await entries(client, admin_headers, **params)]

        assert await actions(entity_type="service", entity_id="s1") == ["service.update s1", "service.create s1"]
        assert await actions(entity_id="s1", action="schedule.replace") == ["schedule.replace s1"]
        assert await actions(actor_id=str(admin.id)) == ["user.update u1"]
        window = {"from": "2030-01-02T00:00:00Z", "to": "2030-01-04T00:00:00+00:00"}
        assert await actions(**window) == ["service.create s2", "service.update s1"]
        assert await actions(entity_type="appointment") == []

    @pytest.mark.parametrize(
        "params",
        [{"from": "2030-01-01T00:00:00"}, {"to": "yesterday"}, {"actor_id": "x"}, {"limit": 201}, {"offset": -1}],
    )
    async def test_bad_parameters(self, client, admin_headers, params):
        assert_problem(await client.get(AUDIT, params=params, headers=admin_headers), 422, "validation_error")


class TestServiceChanges:
    async def test_create_update_and_deactivate_are_recorded_with_what_changed(self, client, admin, admin_headers):
        created = await client.post(
            SERVICES, json={"name": "Massage", "duration_minutes": 60, "price": 70}, headers=admin_headers
        )
        service_id = created.json()["id"]
        await client.patch(
            f"{SERVICES}/{service_id}", json={"price": "75.50", "name": "Massage"}, headers=admin_headers
        )
        await client.delete(f"{SERVICES}/{service_id}", headers=admin_headers)

        deactivated, updated, create = await entries(client, admin_headers, entity_type="service", entity_id=service_id)

        assert {e["actor_id"] for e in (deactivated, updated, create)} == {str(admin.id)}
        assert create["action"] == "service.create" and create["before"] is None
        assert create["after"] | {"id": None} == {
            "id": None,
            "name": "Massage",
            "description": "",
            "duration_minutes": 60,
            "buffer_before_minutes": 0,
            "buffer_after_minutes": 0,
            "price": "70.00",
            "currency": "EUR",
            "requires_confirmation": False,
            "min_notice_minutes": 60,
            "max_advance_days": 90,
            "is_active": True,
            "staff_ids": [],
            "capacity": 1,
            "max_bookings_per_client_day": None,
            "max_bookings_per_client_week": None,
            "max_bookings_per_client_month": None,
            "min_gap_minutes": None,
            "resource_ids": [],
        }
        assert (updated["action"], updated["before"], updated["after"]) == (
            "service.update",
            {"price": "70.00"},
            {"price": "75.50"},
        )
        assert (deactivated["action"], deactivated["before"], deactivated["after"]) == (
            "service.deactivate",
            {"is_active": True},
            {"is_active": False},
        )

    async def test_a_patch_that_changes_nothing_is_not_recorded(self, client, admin_headers):
        created = await client.post(SERVICES, json={"name": "Massage", "duration_minutes": 60}, headers=admin_headers)
        await client.patch(f"{SERVICES}/{created.json()['id']}", json={"name": "Massage"}, headers=admin_headers)

        assert [e["action"] for e in await entries(client, admin_headers)] == ["service.create"]

    async def test_a_refused_change_leaves_no_entry(self, client, admin_headers):
        body = {"name": "Massage", "duration_minutes": 60, "staff_ids": [str(uuid.uuid4())]}
        assert_problem(await client.post(SERVICES, json=body, headers=admin_headers), 422, "unknown_staff")

        assert await entries(client, admin_headers) == []


class TestScheduleChanges:
    async def test_staff_calendar_changes_are_filed_under_the_staff_member(self, client, session, admin_headers):
        staff = await create_user(session, role=Role.staff, timezone="Europe/Berlin")
        headers = (await start_session(staff)).headers
        base = f"/api/v1/staff/{staff.id}"
        week = {"timezone": "UTC", "intervals": [{"weekday": 0, "start": "09:00", "end": "10:00"}]}
        await client.put(f"{base}/schedule", json=week, headers=headers)
        block = {"starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z", "reason": "Trip"}
        time_off = (await client.post(f"{base}/time-off", json=block, headers=headers)).json()["time_off"]
        await client.post(f"{base}/overrides", json={"date": "2030-01-03", "intervals": []}, headers=headers)

        override, block_entry, schedule = await entries(client, admin_headers, entity_type="schedule")

        assert {e["entity_id"] for e in (override, block_entry, schedule)} == {str(staff.id)}
        assert {e["actor_id"] for e in (override, block_entry, schedule)} == {str(staff.id)}
        assert schedule["action"] == "schedule.replace"
        assert schedule["before"] == {"timezone": "Europe/Berlin", "intervals": []}
        assert schedule["after"] == {"timezone": "UTC", "intervals": week["intervals"]}
        assert block_entry["action"] == "time_off.create"
        assert block_entry["after"] == {
            "id": time_off["id"],
            "staff_id": str(staff.id),
            "starts_at": "2030-01-01T00:00:00+00:00",
            "ends_at": "2030-01-02T00:00:00+00:00",
            "reason": "Trip",
        }
        assert override["action"] == "override.create"
        assert override["after"] == {"id": override["after"]["id"], "date": "2030-01-03", "intervals": []}


class TestUserChanges:
    async def test_admin_create_update_and_deactivate(self, client, admin, admin_headers):
        body = {"email": "new.staff@example.org", "password": "a long unusual passphrase", "full_name": "New Staff"}
        user_id = (await client.post(USERS, json=body | {"role": "staff"}, headers=admin_headers)).json()["id"]
        await client.patch(f"{USERS}/{user_id}", json={"role": "user", "full_name": "Renamed"}, headers=admin_headers)
        await client.delete(f"{USERS}/{user_id}", headers=admin_headers)

        deactivated, updated, created = await entries(client, admin_headers, entity_type="user", entity_id=user_id)

        assert {e["actor_id"] for e in (deactivated, updated, created)} == {str(admin.id)}
        assert created["action"] == "user.create"
        assert created["after"]["email"] == "new.staff@example.org" and created["after"]["role"] == "staff"
        assert not {"hashed_password", "tokens_valid_after"} & created["after"].keys()
        assert (updated["action"], updated["before"], updated["after"]) == (
            "user.update",
            {"role": "staff", "full_name": "New Staff"},
            {"role": "user", "full_name": "Renamed"},
        )
        assert (deactivated["action"], deactivated["before"], deactivated["after"]) == (
            "user.deactivate",
            {"is_active": True},
            {"is_active": False},
        )

    async def test_self_service_profile_edits_name_the_user_as_actor(self, client, session, admin_headers):
        user = await create_user(session, full_name="Old Name")
        headers = (await start_session(user)).headers

        response = await client.patch(f"{USERS}/me", json={"full_name": "New Name", "locale": "ru"}, headers=headers)
        assert response.status_code == 200

        (updated,) = await entries(client, admin_headers, entity_type="user", entity_id=str(user.id))
        assert (updated["action"], updated["actor_id"]) == ("user.update", str(user.id))
        assert (updated["before"], updated["after"]) == (
            {"full_name": "Old Name", "locale": "en"},
            {"full_name": "New Name", "locale": "ru"},
        )

    async def test_erasure_is_recorded_and_scrubs_personal_data_from_earlier_entries(
        self, client, session, admin_headers
    ):
        body = {"email": "leaving@example.org", "password": "a long unusual passphrase", "full_name": "Lea Ving"}
        user_id = (await client.post(USERS, json=body, headers=admin_headers)).json()["id"]
        await client.patch(f"{USERS}/{user_id}", json={"phone": "+49 30 1234567"}, headers=admin_headers)
        user = await session.get(User, uuid.UUID(user_id))
        headers = (await start_session(user)).headers

        assert (await client.delete(f"{USERS}/me", headers=headers)).status_code == 204

        erased, updated, created = await entries(client, admin_headers, entity_type="user", entity_id=user_id)
        assert (erased["action"], erased["actor_id"], erased["before"]) == ("user.erase", user_id, None)
        assert erased["after"]["is_active"] is False and erased["after"]["deleted_at"]
        assert updated["before"] == {"phone": None} and updated["after"] == {"phone": "[erased]"}
        assert created["after"]["email"] == created["after"]["full_name"] == "[erased]"
        assert created["after"]["role"] == "user"  # what is not personal stays
        everything = str(await entries(client, admin_headers))
        assert "leaving@example.org" not in everything and "Lea Ving" not in everything and "1234567" not in everything
