/**
 * A typed walk through the booking flow: sign up, sign in, profile, availability, an idempotent
 * booking, a reschedule, a cancel, and an error narrowed on its `code`. Type-checked in CI with
 * `tsc --strict`; run it against a dev server with a TS runner if you like.
 */
import { createApiClient, formBody, newIdempotencyKey, type Schemas } from "../src/client";

let accessToken: string | undefined;
const api = createApiClient({ baseUrl: "http://127.0.0.1:8000", accessToken: () => accessToken });

export async function signUp(email: string, password: string): Promise<void> {
  // timezone and locale are optional: the server defaults them (UTC, en).
  const { error } = await api.POST("/api/v1/auth/register", {
    body: { email, password, full_name: "Ada Lovelace" },
  });
  if (error) {
    if (error.code === "weak_password") throw new Error(`choose another password: ${error.detail}`);
    if (error.code === "validation_error") throw new Error(error.errors.map((e) => e.msg).join("; "));
    throw new Error(error.detail);
  }
}

export async function signIn(email: string, password: string): Promise<Schemas["TokenPairOut"]> {
  const { data, error } = await api.POST("/api/v1/auth/login", {
    body: { username: email, password, grant_type: "password" },
    bodySerializer: formBody,
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
  });
  if (error) {
    if (error.code === "email_not_verified") throw new Error("open the link we mailed you first");
    if (error.code === "invalid_credentials") throw new Error("wrong email or password");
    throw new Error(error.detail);
  }
  accessToken = data.access_token;
  return data;
}

export async function me(): Promise<Schemas["UserOut"]> {
  const { data, error } = await api.GET("/api/v1/users/me");
  if (error) throw new Error(`${error.code}: ${error.detail}`);
  return data;
}

export async function firstFreeSlot(serviceId: string): Promise<Schemas["AvailableSlot"] | undefined> {
  const { data, error } = await api.GET("/api/v1/availability", {
    params: { query: { service_id: serviceId, start: "2027-03-08", end: "2027-03-15", tz: "Europe/Berlin" } },
  });
  if (error) throw new Error(error.detail);
  return data.slots[0];
}

export async function book(serviceId: string, slot: Schemas["AvailableSlot"]): Promise<Schemas["AppointmentOut"]> {
  const key = newIdempotencyKey(); // retry with the same key after a timeout: no second booking
  const { data, error, response } = await api.POST("/api/v1/appointments", {
    params: { header: { "Idempotency-Key": key } },
    body: { service_id: serviceId, staff_id: slot.staff_id, starts_at: slot.starts_at, notes: "First visit" },
  });
  if (error) {
    if (error.code === "slot_unavailable") {
      throw new Error(`taken meanwhile: ${error.conflicts.join(", ")}`); // `conflicts` is typed here
    }
    throw new Error(`${error.code}: ${error.detail}`);
  }
  if (response.headers.get("Idempotent-Replayed") === "true") console.log("an earlier try had booked it");
  return data;
}

export async function reschedule(appointment: Schemas["AppointmentOut"], startsAt: string): Promise<Schemas["AppointmentOut"]> {
  const { data, error } = await api.PATCH("/api/v1/appointments/{appointment_id}", {
    params: { path: { appointment_id: appointment.id }, header: { "Idempotency-Key": newIdempotencyKey() } },
    body: { starts_at: startsAt },
  });
  if (error) {
    switch (error.code) {
      case "cancellation_window_closed":
        throw new Error("too late to move it");
      case "slot_unavailable":
        throw new Error(`taken: ${error.conflicts.join(", ")}`);
      default:
        throw new Error(error.detail);
    }
  }
  return data;
}

export async function cancel(appointment: Schemas["AppointmentOut"]): Promise<Schemas["AppointmentStatus"]> {
  const { data, error } = await api.POST("/api/v1/appointments/{appointment_id}/cancel", {
    params: { path: { appointment_id: appointment.id } },
    body: { reason: "Plans changed" },
  });
  if (error) throw new Error(`${error.code}: ${error.detail}`);
  return data.status;
}

export async function main(): Promise<void> {
  await signUp("ada@example.com", "correct horse battery staple");
  await signIn("ada@example.com", "correct horse battery staple");
  console.log("signed in as", (await me()).email);
  const services = await api.GET("/api/v1/services");
  const service = services.data?.items[0];
  if (!service) return;
  const slot = await firstFreeSlot(service.id);
  if (!slot) return;
  const booked = await book(service.id, slot);
  const moved = await reschedule(booked, slot.ends_at);
  console.log("now", moved.starts_at, "then", await cancel(moved));
}

/**
 * The page an emailed manage link opens (`/appointments/{id}?token=…`): no sign-in, the token is the
 * credential. Read what the link allows now, offer the free slots, and move or cancel.
 */
export async function manageFromEmail(pageUrl: string): Promise<void> {
  const token = new URL(pageUrl).searchParams.get("token");
  if (!token) throw new Error("not a manage link");
  const path = { token };
  const opened = await api.GET("/api/v1/manage/{token}", { params: { path } });
  if (opened.error) {
    switch (opened.error.code) {
      case "appointment_closed":
        throw new Error(`this appointment is ${opened.error.appointment_status}`);
      case "manage_link_expired":
        throw new Error("the appointment is over");
      default:
        throw new Error("this link does not work; sign in to see your appointments");
    }
  }
  const { appointment, actions, timezone } = opened.data;
  if (!actions.reschedule.allowed) {
    console.log(`cannot move it: ${actions.reschedule.reason}`);
  } else {
    const day = appointment.starts_at.slice(0, 10);
    const slots = await api.GET("/api/v1/manage/{token}/availability", {
      params: { path, query: { start: day, end: "2027-12-31", tz: timezone } },
    });
    const next = slots.data?.slots.find((slot) => slot.starts_at !== appointment.starts_at);
    if (next) {
      const moved = await api.POST("/api/v1/manage/{token}/reschedule", {
        params: { path, header: { "Idempotency-Key": newIdempotencyKey() } },
        body: { starts_at: next.starts_at, sequence: appointment.sequence },
      });
      if (moved.error?.code === "slot_unavailable") console.log("taken meanwhile; pick another");
      return;
    }
  }
  if (actions.cancel.allowed) {
    await api.POST("/api/v1/manage/{token}/cancel", {
      params: { path, header: { "Idempotency-Key": newIdempotencyKey() } },
      body: { reason: "Plans changed" },
    });
  }
}

export async function subscribeLink(rotate = false): Promise<string> {
  // The feed URL is a secret (no sign-in to read it): rotate it when it may have leaked.
  const { data, error } = rotate
    ? await api.POST("/api/v1/users/me/calendar-feed/rotate")
    : await api.GET("/api/v1/users/me/calendar-feed");
  if (error) throw new Error(`${error.code}: ${error.detail}`);
  return data.webcal_url; // a link to it opens the calendar app's "subscribe" dialog
}
