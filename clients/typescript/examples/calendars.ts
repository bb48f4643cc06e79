/**
 * A staff member connects an external calendar, asks for a sync and reads its sync state; errors
 * narrowed on their `code`. Type-checked in CI with `tsc --strict`.
 */
import { createApiClient, type Schemas } from "../src/client";

const api = createApiClient({ baseUrl: "http://127.0.0.1:8000", accessToken: () => "an access token" });

export async function connectCalDav(staffId: string, url: string, username: string, password: string): Promise<Schemas["CalendarConnectionOut"]> {
  const { data, error } = await api.POST("/api/v1/staff/{staff_id}/calendars", {
    params: { path: { staff_id: staffId } },
    body: { kind: "caldav", url, username, password, name: "Work" },
  });
  if (error) {
    switch (error.code) {
      case "invalid_calendar_url":
        throw new Error(`this URL cannot be used: ${error.detail}`);
      case "invalid_calendar_credentials":
        throw new Error("give both a user name and a password");
      case "too_many_calendars":
        throw new Error("disconnect one first");
      default:
        throw new Error(`${error.code}: ${error.detail}`);
    }
  }
  return data; // data.has_password is true; the password itself never comes back
}

export async function syncNow(staffId: string, calendarId: string): Promise<string> {
  const { data, error } = await api.POST("/api/v1/staff/{staff_id}/calendars/{calendar_id}/sync", {
    params: { path: { staff_id: staffId, calendar_id: calendarId } },
  });
  if (error) throw new Error(error.code === "calendar_inactive" ? "turn it on first" : error.detail);
  return data.next_sync_at;
}

export async function syncState(staffId: string, calendarId: string): Promise<string> {
  const { data, error } = await api.GET("/api/v1/staff/{staff_id}/calendars/{calendar_id}", {
    params: { path: { staff_id: staffId, calendar_id: calendarId } },
  });
  if (error) throw new Error(error.detail);
  if (data.last_error) return `failing ${data.consecutive_failures}× since ${data.last_success_at ?? "ever"}: ${data.last_error}`;
  return `${data.block_count} busy blocks as of ${data.last_success_at ?? "never"}`;
}
