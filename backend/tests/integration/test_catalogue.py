"""`/api/v1/services` and the public side of `/api/v1/staff`: the catalogue clients book from."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from app.models import Role, Service, StaffProfile, WeeklyInterval
from app.services.demo import seed_demo
from app.services.scheduling.availability import find_slots
from app.services.scheduling.availability_cache import staff_version
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, start_session

SERVICES = "/api/v1/services"
STAFF = "/api/v1/staff"


def service_body(**changes) -> dict:
    body = {
        "name": "Haircut",
        "description": "Wash, cut and style.",
        "duration_minutes": 45,
        "buffer_before_minutes": 5,
        "buffer_after_minutes": 10,
        "price": "45.00",
        "currency": "EUR",
        "requires_confirmation": False,
        "min_notice_minutes": 120,
        "max_advance_days": 60,
        "is_active": True,
        "capacity": 1,
        "staff_ids": [],
        "max_bookings_per_client_day": 2,
        "max_bookings_per_client_week": 5,
        "max_bookings_per_client_month": 10,
        "min_gap_minutes": 30,
    }
    return body | changes


@pytest.fixture
async def admin(session):
    return await create_user(session, role=Role.admin)


@pytest.fixture
async def admin_headers(admin):
    return (await start_session(admin)).headers


@pytest.fixture
async def staff(session):
    return await create_user(session, role=Role.staff, full_name="Alice Novak", timezone="Europe/Berlin")


async def create_service(client, headers, **changes) -> dict:
    response = await client.post(SERVICES, json=service_body(**changes), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


class TestCreateService:
    async def test_every_field_is_saved_and_answered(self, client, session, admin_headers, staff):
        response = await client.post(SERVICES, json=service_body(staff_ids=[str(staff.id)]), headers=admin_headers)

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == service_body(staff_ids=[str(staff.id)]) | {
            "resource_ids": [],
            "id": body["id"],
            "created_at": body["created_at"],
            "updated_at": body["updated_at"],
        }
        row = await session.get(Service, uuid.UUID(body["id"]))
        assert (row.price, row.duration_minutes, row.buffer_after_minutes) == (Decimal("45.00"), 45, 10)

    async def test_defaults_for_optional_fields(self, client, admin_headers):
        response = await client.post(
            SERVICES, json={"name": "Consultation", "duration_minutes": 30}, headers=admin_headers
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body["price"] == "0.00" and body["currency"] == "EUR"
        assert (body["buffer_before_minutes"], body["buffer_after_minutes"], body["staff_ids"]) == (0, 0, [])
        assert (body["min_notice_minutes"], body["max_advance_days"], body["is_active"]) == (60, 90, True)
        assert body["max_bookings_per_client_day"] is body["min_gap_minutes"] is None

    @pytest.mark.parametrize(("sent", "answered"), [(45, "45.00"), (19.9, "19.90"), ("7.5", "7.50"), ("0", "0.00")])
    async def test_price_is_answered_as_a_two_decimal_string(self, client, admin_headers, sent, answered):
        body = await create_service(client, admin_headers, price=sent)

        assert body["price"] == answered

    @pytest.mark.parametrize(
        "change",
        [
            {"price": "12.345"},
            {"price": -1},
            {"price": "abc"},
            {"currency": "eur"},
            {"currency": "EURO"},
            {"duration_minutes": 4},
            {"duration_minutes": 1441},
            {"buffer_after_minutes": -5},
            {"max_advance_days": 0},
            {"min_notice_minutes": -1},
            {"name": "   "},
            {"staff_ids": ["not-a-uuid"]},
            {"unknown_field": 1},
        ],
    )
    async def test_invalid_fields(self, client, session, admin_headers, change):
        assert_problem(
            await client.post(SERVICES, json=service_body(**change), headers=admin_headers), 422, "validation_error"
        )
        assert await session.scalar(select(Service)) is None

    async def test_staff_ids_must_be_active_staff_members(self, client, session, admin_headers, staff):
        client_user = await create_user(session, role=Role.user)
        gone = await create_user(session, role=Role.staff, active=False)
        nobody = uuid.uuid4()
        body = service_body(staff_ids=[str(staff.id), str(client_user.id), str(gone.id), str(nobody)])

        response = await client.post(SERVICES, json=body, headers=admin_headers)

        problem = assert_problem(response, 422, "unknown_staff")
        assert problem["staff_ids"] == [str(client_user.id), str(gone.id), str(nobody)]
        assert await session.scalar(select(Service)) is None

    async def test_providers_availability_version_is_bumped(self, client, admin_headers, staff):
        await create_service(client, admin_headers, staff_ids=[str(staff.id)])

        assert await staff_version(staff.id) == "1"


class TestReadServices:
    async def test_public_list_shows_active_services_by_name(self, client, admin_headers):
        for name in ("Massage", "Consultation", "Archived"):
            await create_service(client, admin_headers, name=name, is_active=name != "Archived")

        response = await client.get(SERVICES)

        assert response.status_code == 200
        body = response.json()
        assert [s["name"] for s in body["items"]] == ["Consultation", "Massage"]
        assert (body["total"], body["limit"], body["offset"]) == (2, 50, 0)

    async def test_pagination(self, client, admin_headers):
        for name in ("A", "B", "C"):
            await create_service(client, admin_headers, name=name)

        body = (await client.get(SERVICES, params={"limit": 1, "offset": 1})).json()

        assert ([s["name"] for s in body["items"]], body["total"], body["limit"], body["offset"]) == (["B"], 3, 1, 1)

    @pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"staff_id": "x"}])
    async def test_bad_parameters(self, client, params):
        assert_problem(await client.get(SERVICES, params=params), 422, "validation_error")

    async def test_filter_by_staff_member(self, client, session, admin_headers, staff):
        other = await create_user(session, role=Role.staff)
        await create_service(client, admin_headers, name="Haircut", staff_ids=[str(staff.id)])
        await create_service(client, admin_headers, name="Massage", staff_ids=[str(other.id)])

        body = (await client.get(SERVICES, params={"staff_id": str(staff.id)})).json()

        assert [s["name"] for s in body["items"]] == ["Haircut"]

    async def test_admins_may_include_inactive_services(self, client, admin_headers):
        await create_service(client, admin_headers, name="Archived", is_active=False)

        response = await client.get(SERVICES, params={"include_inactive": True}, headers=admin_headers)

        assert [s["name"] for s in response.json()["items"]] == ["Archived"]

    async def test_only_admins_may_include_inactive_services(self, client, session):
        user_headers = (await start_session(await create_user(session))).headers

        assert_unauthorized(await client.get(SERVICES, params={"include_inactive": True}))
        forbidden = await client.get(SERVICES, params={"include_inactive": True}, headers=user_headers)
        assert_problem(forbidden, 403, "forbidden")

    async def test_a_bad_token_on_a_public_route_is_still_401(self, client):
        assert_unauthorized(await client.get(SERVICES, headers={"Authorization": "Bearer nonsense"}))

    async def test_get_one(self, client, admin_headers):
        created = await create_service(client, admin_headers)

        response = await client.get(f"{SERVICES}/{created['id']}")

        assert response.status_code == 200 and response.json() == created

    async def test_inactive_service_is_hidden_from_everyone_but_admins(self, client, session, admin_headers):
        created = await create_service(client, admin_headers, is_active=False)
        url = f"{SERVICES}/{created['id']}"
        user_headers = (await start_session(await create_user(session))).headers

        assert_problem(await client.get(url), 404, "not_found")
        assert_problem(await client.get(url, headers=user_headers), 404, "not_found")
        assert (await client.get(url, headers=admin_headers)).json()["is_active"] is False

    async def test_unknown_and_malformed_ids(self, client):
        assert_problem(await client.get(f"{SERVICES}/{uuid.uuid4()}"), 404, "not_found")
        assert_problem(await client.get(f"{SERVICES}/42"), 422, "validation_error")


class TestUpdateService:
    async def test_only_the_fields_sent_change(self, client, admin_headers):
        created = await create_service(client, admin_headers)

        response = await client.patch(
            f"{SERVICES}/{created['id']}", json={"price": 50, "name": "Long haircut"}, headers=admin_headers
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["price"], body["name"]) == ("50.00", "Long haircut")
        unchanged = {k: v for k, v in body.items() if k not in {"price", "name", "updated_at"}}
        assert unchanged == {k: v for k, v in created.items() if k not in {"price", "name", "updated_at"}}

    async def test_staff_ids_replace_the_providers_and_both_sides_are_bumped(
        self, client, session, admin_headers, staff
    ):
        newcomer = await create_user(session, role=Role.staff)
        created = await create_service(client, admin_headers, staff_ids=[str(staff.id)])

        response = await client.patch(
            f"{SERVICES}/{created['id']}", json={"staff_ids": [str(newcomer.id)]}, headers=admin_headers
        )

        assert response.json()["staff_ids"] == [str(newcomer.id)]
        assert [await staff_version(staff.id), await staff_version(newcomer.id)] == ["2", "1"]

    async def test_reactivating_an_inactive_service(self, client, admin_headers):
        created = await create_service(client, admin_headers, is_active=False)

        response = await client.patch(f"{SERVICES}/{created['id']}", json={"is_active": True}, headers=admin_headers)

        assert response.json()["is_active"] is True
        assert (await client.get(f"{SERVICES}/{created['id']}")).status_code == 200

    @pytest.mark.parametrize("change", [{"currency": "usd"}, {"duration_minutes": 0}, {"id": str(uuid.uuid4())}])
    async def test_invalid_changes(self, client, admin_headers, change):
        created = await create_service(client, admin_headers)
        response = await client.patch(f"{SERVICES}/{created['id']}", json=change, headers=admin_headers)
        assert_problem(response, 422, "validation_error")

    async def test_unknown_staff(self, client, admin_headers):
        created = await create_service(client, admin_headers)
        response = await client.patch(
            f"{SERVICES}/{created['id']}", json={"staff_ids": [str(uuid.uuid4())]}, headers=admin_headers
        )
        assert_problem(response, 422, "unknown_staff")

    async def test_unknown_service(self, client, admin_headers):
        response = await client.patch(f"{SERVICES}/{uuid.uuid4()}", json={"name": "X"}, headers=admin_headers)
        assert_problem(response, 404, "not_found")

    async def test_a_deactivated_provider_already_linked_may_be_sent_back(self, client, session, admin_headers, staff):
        created = await create_service(client, admin_headers, staff_ids=[str(staff.id)])
        staff.is_active = False
        await session.commit()
        newcomer = await create_user(session, role=Role.staff)
        staff_ids = [str(staff.id), str(newcomer.id)]

        response = await client.patch(
            f"{SERVICES}/{created['id']}", json={"staff_ids": staff_ids}, headers=admin_headers
        )

        assert response.status_code == 200, response.text
        assert response.json()["staff_ids"] == staff_ids
        other = await create_service(client, admin_headers, name="Other")
        late = await client.patch(
            f"{SERVICES}/{other['id']}", json={"staff_ids": [str(staff.id)]}, headers=admin_headers
        )
        assert_problem(late, 422, "unknown_staff")


class TestDeactivateService:
    async def test_delete_deactivates_and_keeps_the_row(self, client, session, admin_headers, staff):
        created = await create_service(client, admin_headers, staff_ids=[str(staff.id)])

        response = await client.delete(f"{SERVICES}/{created['id']}", headers=admin_headers)

        assert response.status_code == 204
        row = await session.get(Service, uuid.UUID(created["id"]))
        assert row is not None and row.is_active is False
        assert_problem(await client.get(f"{SERVICES}/{created['id']}"), 404, "not_found")
        assert (await client.get(SERVICES)).json()["total"] == 0
        assert await staff_version(staff.id) == "2"

    async def test_deleting_twice_is_harmless(self, client, admin_headers):
        created = await create_service(client, admin_headers)
        assert (await client.delete(f"{SERVICES}/{created['id']}", headers=admin_headers)).status_code == 204
        assert (await client.delete(f"{SERVICES}/{created['id']}", headers=admin_headers)).status_code == 204

    async def test_unknown_service(self, client, admin_headers):
        assert_problem(await client.delete(f"{SERVICES}/{uuid.uuid4()}", headers=admin_headers), 404, "not_found")


ADMIN_ROUTES = [
    ("POST", SERVICES, service_body()),
    ("PATCH", f"{SERVICES}/{{id}}", {"name": "X"}),
    ("DELETE", f"{SERVICES}/{{id}}", None),
]


class TestAdminOnly:
    @pytest.mark.parametrize("role", [Role.user, Role.staff])
    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_other_roles_are_forbidden(self, client, session, admin_headers, role, method, path, body):
        created = await create_service(client, admin_headers, name="Original")
        headers = (await start_session(await create_user(session, role=role))).headers

        response = await client.request(method, path.format(id=created["id"]), json=body, headers=headers)

        assert_problem(response, 403, "forbidden")
        rows = (await session.scalars(select(Service))).all()
        assert [(s.name, s.is_active) for s in rows] == [("Original", True)]

    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_anonymous_is_unauthorized(self, client, method, path, body):
        assert_unauthorized(await client.request(method, path.format(id=uuid.uuid4()), json=body))


class TestPublicStaff:
    async def test_list_shows_active_staff_with_their_active_services(self, client, session, admin_headers, staff):
        bob = await create_user(session, role=Role.staff, full_name="Bob Brown", timezone="America/New_York")
        await create_user(session, role=Role.staff, full_name="Gone Staff", active=False)
        await create_user(session, role=Role.user, full_name="Client")
        await create_user(session, role=Role.admin, full_name="Admin")
        session.add(StaffProfile(user_id=staff.id, timezone="Europe/Berlin", bio="Colourist."))
        await session.commit()
        haircut = await create_service(client, admin_headers, name="Haircut", staff_ids=[str(staff.id), str(bob.id)])
        await create_service(client, admin_headers, name="Archived", staff_ids=[str(staff.id)], is_active=False)

        response = await client.get(STAFF)

        assert response.status_code == 200
        body = response.json()
        assert (body["total"], body["limit"], body["offset"]) == (2, 50, 0)
        offered = [
            {k: haircut[k] for k in ("id", "name", "duration_minutes", "price", "currency")},
        ]
        assert body["items"] == [
            {"id": str(staff.id), "full_name": "Alice Novak", "bio": "Colourist.", "timezone": "Europe/Berlin",
             "services": offered},
            {"id": str(bob.id), "full_name": "Bob Brown", "bio": "", "timezone": "America/New_York",
             "services": offered},
        ]  # fmt: skip

    async def test_filter_by_service_and_paginate(self, client, session, admin_headers, staff):
        bob = await create_user(session, role=Role.staff, full_name="Bob Brown")
        await create_user(session, role=Role.staff, full_name="Carla Diaz")
        massage = await create_service(client, admin_headers, name="Massage", staff_ids=[str(staff.id), str(bob.id)])

        body = (await client.get(STAFF, params={"service_id": massage["id"], "limit": 1, "offset": 1})).json()

        assert ([s["full_name"] for s in body["items"]], body["total"]) == (["Bob Brown"], 2)

    async def test_get_one(self, client, staff):
        response = await client.get(f"{STAFF}/{staff.id}")

        assert response.status_code == 200
        assert response.json() == {
            "id": str(staff.id),
            "full_name": "Alice Novak",
            "bio": "",
            "timezone": "Europe/Berlin",
            "services": [],
        }

    async def test_only_active_staff_members_have_a_profile(self, client, session):
        client_user = await create_user(session, role=Role.user)
        gone = await create_user(session, role=Role.staff, active=False)

        for user_id in (client_user.id, gone.id, uuid.uuid4()):
            assert_problem(await client.get(f"{STAFF}/{user_id}"), 404, "not_found")
        assert_problem(await client.get(f"{STAFF}/nope"), 422, "validation_error")


class TestDemoCatalogue:
    async def test_seeding_twice_gives_one_catalogue_with_hours_in_three_zones(self, client, session):
        for _ in range(2):
            await seed_demo(session)
            await session.commit()

        services = (await client.get(SERVICES)).json()["items"]
        fields = ("name", "duration_minutes", "buffer_after_minutes", "requires_confirmation")
        assert [tuple(s[f] for f in fields) for s in services] == [
            ("Consultation", 30, 0, False),
            ("Deep-tissue massage", 60, 15, True),
            ("Haircut", 45, 10, False),
        ]
        staff = (await client.get(STAFF)).json()["items"]
        assert {s["full_name"]: s["timezone"] for s in staff} == {
            "Alice Novak": "Europe/Berlin",
            "Boris Ivanov": "Europe/Moscow",
            "Nora Jenkins": "America/New_York",
        }
        assert all(s["bio"] and s["services"] for s in staff)
        week = await session.scalar(select(func.count()).select_from(WeeklyInterval))
        assert week == 10 + 4 + 10
        start = datetime.now(UTC) + timedelta(days=2)
        slots = await find_slots(session, uuid.UUID(services[0]["id"]), start, start + timedelta(days=7))
        assert {slot.staff_id for slot in slots} == {uuid.UUID(s["id"]) for s in staff}

    async def test_edits_to_demo_data_survive_a_reseed(self, client, session):
        await seed_demo(session)
        await session.commit()
        haircut = await session.scalar(select(Service).where(Service.name == "Haircut"))
        haircut.price = Decimal("99.00")
        await session.commit()

        await seed_demo(session)
        await session.commit()

        assert (await session.scalar(select(func.count()).select_from(Service))) == 3
        await session.refresh(haircut)
        assert haircut.price == Decimal("99.00")
