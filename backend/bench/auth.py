"""Login and /users/me throughput and latency against one uvicorn process.

    uv run python bench/auth.py [--logins 200] [--reads 3000] [--concurrency 16]

Uses BENCH_DATABASE_URL/BENCH_REDIS_URL (or TEST_*), else embedded servers; always a throwaway database.
The per-IP login limit is lifted for the run (every request comes from 127.0.0.1).
"""

import argparse
import asyncio

import httpx
from _harness import api_server, bench_database, measure

PASSWORD = "a bench password that nobody uses"
ACCOUNTS = 32  # logins for one account queue behind each other (the failed-login lock): spread them


def email(n: int) -> str:
    return f"bench{n}@example.com"


async def seed(database_url: str, redis_url: str) -> None:
    import os

    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    from app.database import dispose_engine, unit_of_work
    from app.services.accounts.users import create_user

    async with unit_of_work() as session:
        for n in range(ACCOUNTS):
            await create_user(session, email=email(n), password=PASSWORD, full_name=f"Bench User {n}")
    await dispose_engine()


async def run(base: str, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        turn = iter(range(10**9))

        async def login() -> None:
            form = {"username": email(next(turn) % ACCOUNTS), "password": PASSWORD}
            response = await http.post("/api/v1/auth/login", data=form)
            assert response.status_code == 200, response.text

        await measure("POST /api/v1/auth/login", login, requests=args.logins, concurrency=args.concurrency)
        form = {"username": email(0), "password": PASSWORD}
        token = (await http.post("/api/v1/auth/login", data=form)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        async def me() -> None:
            response = await http.get("/api/v1/users/me", headers=headers)
            assert response.status_code == 200, response.text

        await measure("GET /api/v1/users/me", me, requests=args.reads, concurrency=args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with bench_database() as (database_url, redis_url):
        asyncio.run(seed(database_url, redis_url))
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ENVIRONMENT": "test",
            "LOG_LEVEL": "WARNING",
            "LOGIN_ATTEMPTS_PER_IP": "1000000/minute",
            "PASSWORD_HASH_MAX_WAITING": "1000",  # measure hashing throughput, not the flood guard
        }
        with api_server(env) as base:
            asyncio.run(run(base, args))


if __name__ == "__main__":
    main()
