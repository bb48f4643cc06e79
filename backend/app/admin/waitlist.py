"""The waitlist, read-only: who waits for what, and the slots held for them."""

from app.admin.records import ReadOnly
from app.models import WaitlistEntry, WaitlistOffer


class WaitlistEntryAdmin(ReadOnly, model=WaitlistEntry):
    name, name_plural, icon = "Waitlist entry", "Waitlist", "fa-solid fa-hourglass-half"
    column_list = [
        WaitlistEntry.created_at,
        WaitlistEntry.client_id,
        WaitlistEntry.service_id,
        WaitlistEntry.staff_id,
        WaitlistEntry.first_date,
        WaitlistEntry.last_date,
        WaitlistEntry.status,
    ]
    column_default_sort = [(WaitlistEntry.created_at, True)]


class WaitlistOfferAdmin(ReadOnly, model=WaitlistOffer):
    name, name_plural, icon = "Waitlist offer", "Waitlist offers", "fa-solid fa-hand-holding"
    column_list = [
        WaitlistOffer.created_at,
        WaitlistOffer.client_id,
        WaitlistOffer.staff_id,
        WaitlistOffer.starts_at,
        WaitlistOffer.expires_at,
        WaitlistOffer.status,
    ]
    column_default_sort = [(WaitlistOffer.created_at, True)]
