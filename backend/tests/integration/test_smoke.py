async def test_health(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_register_then_login_flow(client, session):
    from sqlalchemy import select

    from app.models import OutboxMessage

    r = await client.post(
        "/api/v1/auth/register",
        json={"email": "ada@example.com", "password": "a long unusual passphrase", "full_name": "Ada"},
    )
    assert r.status_code == 202, r.text
    rows = (await session.scalars(select(OutboxMessage))).all()
    assert [m.payload["template"] for m in rows] == ["verify_email"]
    r = await client.post(
        "/api/v1/auth/login", data={"username": "ada@example.com", "password": "a long unusual passphrase"}
    )
    assert r.status_code == 403 and r.json()["code"] == "email_not_verified"
