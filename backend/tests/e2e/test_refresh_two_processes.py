"""Two API processes: tabs refreshing with one refresh token at once, through either process, all stay signed in."""

import asyncio

import httpx

from tests.e2e import test_ws_fanout
from tests.factories import bearer, create_user, start_session

two_apis = test_ws_fanout.two_apis  # the module's fixture, used here too
TABS = 8


async def test_concurrent_refreshes_across_two_processes_all_get_a_working_session(two_apis, session):
    a, b = two_apis
    user = await create_user(session)
    shared = (await start_session(user)).refresh_token

    async with httpx.AsyncClient(timeout=10) as http:
        answers = await asyncio.gather(
            *(
                http.post(f"http://{(a, b)[n % 2]}/api/v1/auth/refresh", json={"refresh_token": shared})
                for n in range(TABS)
            )
        )
        assert [r.status_code for r in answers] == [200] * TABS, [r.text for r in answers]
        pairs = [r.json() for r in answers]
        assert len({p["refresh_token"] for p in pairs}) == 1
        for n, pair in enumerate(pairs):
            me = await http.get(f"http://{(a, b)[n % 2]}/api/v1/users/me", headers=bearer(pair["access_token"]))
            assert me.status_code == 200, me.text
        again = await http.post(f"http://{b}/api/v1/auth/refresh", json={"refresh_token": pairs[0]["refresh_token"]})
        assert again.status_code == 200, again.text
